// kd: knowledge-distillation losses and gradients for LLM trainers (header-only).
// One version number, parsed by CMake.
#pragma once

#define KD_VERSION_MAJOR 0
#define KD_VERSION_MINOR 1
#define KD_VERSION_PATCH 0

// Versioned inline namespace: two kd versions linked into one program never share symbols.
#define KD_BEGIN_NAMESPACE namespace kd { inline namespace v0 {
#define KD_END_NAMESPACE } }

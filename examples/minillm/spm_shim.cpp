// A C interface to sentencepiece, built as a separate shared library (minillm_spm) that minillm loads with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece embeds its own copy of protobuf 3.14 and exports those symbols, while libtorch links the
// system libprotobuf 3.21; linking both into one executable makes the two runtimes resolve each other's symbols and crash
// during static initialisation. Loaded deep-bound and local, sentencepiece keeps its own protobuf and torch keeps the system
// one. Strings cross the boundary as plain C buffers.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

namespace {
void copy_out(const std::string& s, char* buf, int cap) {
  if (!buf || cap <= 0) return;
  const std::size_t n = std::min<std::size_t>(s.size(), static_cast<std::size_t>(cap - 1));
  std::memcpy(buf, s.data(), n);
  buf[n] = '\0';
}
}  // namespace

extern "C" {

// Trains a model (seeded: sentencepiece samples sentences); returns 0 on success, else writes the error into err.
__attribute__((visibility("default"))) int minillm_spm_train(const char* args, unsigned seed, char* err, int cap) {
  sentencepiece::SetRandomGeneratorSeed(seed);
  const auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (st.ok()) return 0;
  copy_out(st.ToString(), err, cap);
  return 1;
}

// Loads a model; returns a handle or null (error in err).
__attribute__((visibility("default"))) void* minillm_spm_load(const char* path, char* err, int cap) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  const auto st = sp->Load(path);
  if (st.ok()) return sp;
  copy_out(st.ToString(), err, cap);
  delete sp;
  return nullptr;
}

__attribute__((visibility("default"))) void minillm_spm_free(void* h) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(h);
}

__attribute__((visibility("default"))) int minillm_spm_piece_size(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}

// Encodes text into ids; returns the number of ids (written up to cap), or -1 on error.
__attribute__((visibility("default"))) int minillm_spm_encode(void* h, const char* text, int* ids, int cap) {
  std::vector<int> v;
  if (!static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(text, &v).ok()) return -1;
  for (std::size_t i = 0; i < v.size() && static_cast<int>(i) < cap; ++i) ids[i] = v[i];
  return static_cast<int>(v.size());
}

// Decodes ids into text; returns the text length (written up to cap - 1, NUL-terminated), or -1 on error.
__attribute__((visibility("default"))) int minillm_spm_decode(void* h, const int* ids, int n, char* buf, int cap) {
  std::string s;
  if (!static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n), &s).ok()) return -1;
  copy_out(s, buf, cap);
  return static_cast<int>(s.size());
}
}

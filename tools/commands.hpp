// Subcommand table of the kd tool. Add a command: write cmd_NAME.cpp defining `int cmd_NAME(int, char**)`, declare it here
// and add a row to commands().
#pragma once

#include <vector>

namespace kdtool {

int cmd_gradcheck(int argc, char** argv);
int cmd_loss(int argc, char** argv);
int cmd_pg(int argc, char** argv);

struct command {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
};

inline const std::vector<command>& commands() {
  static const std::vector<command> c = {
      {"gradcheck", "check every loss's analytic gradient against finite differences and the fused kernels", cmd_gradcheck},
      {"loss", "compute a divergence and its gradient for .npy inputs, print JSON", cmd_loss},
      {"pg", "MiniLLM policy-gradient step for .npy inputs: rewards, advantages, weights, diagnostics (JSON), gradient", cmd_pg},
  };
  return c;
}

}  // namespace kdtool

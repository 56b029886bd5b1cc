// kd command-line tool. Subcommands are registered in commands.hpp; each lives in its own cmd_*.cpp.
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.hpp"

int main(int argc, char** argv) {
  const auto& cmds = kdtool::commands();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("usage: kd <command> [options]\n\ncommands:\n");
    for (const auto& c : cmds) std::printf("  %-10s %s\n", c.name, c.summary);
    std::printf("\nkd <command> --help for the options of one command.\n");
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : cmds)
    if (!std::strcmp(argv[1], c.name)) return c.run(argc - 1, argv + 1);
  std::fprintf(stderr, "kd: unknown command '%s' (kd --help lists them)\n", argv[1]);
  return 2;
}

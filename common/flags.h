// Command lines of snapback's binaries: Abseil flags (ABSL_FLAG in the
// binary's main file), parsed by ParseCommandLineOrExit so that every binary
// behaves alike:
//   * `--help` / `-h` prints the usage message and the binary's own flags
//     (name, default, help) in one format, and exits 0;
//   * an unknown flag or a value of the wrong type prints one line on stderr
//     ("PROGRAM: unknown flag --x (see --help)") and exits 2;
//   * `--` ends the flags; what follows is returned untouched.
// Values that parse but are out of range are checked by main(), which calls
// ExitBadFlag (exit 2) or ExitFailure (exit 1) with a message saying what to
// do.
#ifndef SNAPBACK_COMMON_FLAGS_H_
#define SNAPBACK_COMMON_FLAGS_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace snapback {

struct CommandLine {
  // The arguments that are not flags, in order: positional arguments, then
  // everything after `--`. argv[0] is not included.
  std::vector<std::string> args;
};

// Parses argv into the binary's ABSL_FLAGs. `program` names the binary in
// messages; `usage` is the usage line(s) and a paragraph on what it does;
// `flags_file` is __FILE__ of the file that defines the binary's flags (the
// ones --help lists). Positional arguments before `--` are an error (exit 2)
// unless `allow_positional`.
CommandLine ParseCommandLineOrExit(int argc, char** argv, absl::string_view program,
                                   absl::string_view usage, absl::string_view flags_file,
                                   bool allow_positional = false);

// "PROGRAM: message (see --help)" on stderr, exit 2.
[[noreturn]] void ExitBadFlag(absl::string_view program, absl::string_view message);
// "PROGRAM: message" on stderr, exit 1.
[[noreturn]] void ExitFailure(absl::string_view program, absl::string_view message);

// A duration flag's value checked for range: not negative, not infinite, and
// not zero unless `zero_ok`; otherwise ExitBadFlag naming the flag.
absl::Duration CheckDurationFlag(absl::string_view program, absl::string_view name,
                                 absl::Duration value, bool zero_ok);

}  // namespace snapback

#endif  // SNAPBACK_COMMON_FLAGS_H_

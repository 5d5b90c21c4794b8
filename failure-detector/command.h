// RunCommand: runs a program to completion under a timeout and captures its
// output. It is how the scheduler adapters talk to command-line tools
// (scontrol, scancel, an operator's kubectl wrapper) and how the Slurm test
// fixture drives its private cluster.
//
// The child:
//   - is found by looking argv[0] up in the caller's PATH (posix_spawnp);
//   - gets the caller's environment with `extra_env` laid over it;
//   - reads /dev/null as stdin; its stdout and stderr go to two pipes that
//     are read with poll() while it runs, so a chatty command never blocks;
//   - runs in a process group of its own, with default signal dispositions
//     and an empty signal mask (whatever the caller ignores or blocks);
//   - is killed at the timeout with SIGKILL to its whole process group.
//
// Output is collected until the command itself exits. A background process it
// leaves behind is neither waited for nor killed, and what it writes after
// the command has exited is not collected.
//
// Thread-safe: every call is independent (the pipes are close-on-exec, so a
// command spawned by another thread at the same moment does not inherit them).
#ifndef SNAPBACK_FAILURE_DETECTOR_COMMAND_H_
#define SNAPBACK_FAILURE_DETECTOR_COMMAND_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace snapback::detector {

// How a command ended and what it printed.
struct CommandResult {
  // The exit status when the command exited, -1 when a signal killed it.
  int exit_code = -1;
  // The signal that killed it, 0 when it exited.
  int signal = 0;
  // Everything it wrote to stdout / stderr (each capped at kMaxCommandOutput
  // bytes; the rest is read and dropped).
  std::string out, err;

  // True when it exited with code 0.
  bool success() const { return signal == 0 && exit_code == 0; }
  // "exit code 3" or "killed by signal 9 (Killed)", for messages.
  std::string DescribeExit() const;
};

// Per stream; more output than this is read (so the command can go on) but
// not kept.
inline constexpr size_t kMaxCommandOutput = 1 << 20;

// Runs argv (argv[0] looked up in PATH) and returns how it ended: a command
// that ran and failed is still an OK StatusOr, look at exit_code/signal.
// Errors:
//   INVALID_ARGUMENT   argv is empty
//   NOT_FOUND          argv[0] does not exist (the message names it and says
//                      where it was looked for)
//   INTERNAL           it exists but cannot be started (e.g. EACCES), or a
//                      pipe/pidfd could not be made; the message has errno's text
//   DEADLINE_EXCEEDED  it did not exit within `timeout`; its process group was
//                      SIGKILLed and reaped, and the message names the command
//                      and quotes the end of its stderr
absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::map<std::string, std::string>& extra_env, absl::Duration timeout);

// `s` quoted for a POSIX shell so that it is one word with no expansion:
// returned as is when it only has characters that need no quoting
// ([A-Za-z0-9@%+=:,./_-]), otherwise in single quotes with each ' written as
// '\''. The empty string becomes ''.
std::string ShellQuote(absl::string_view s);

// argv as a shell would need it typed (each word ShellQuote()d), for messages.
std::string CommandLine(const std::vector<std::string>& argv);

// The last `n` non-empty lines of `text`, joined with "; " and cut to at most
// 1000 characters, for error messages.
std::string LastLines(absl::string_view text, int n);

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_COMMAND_H_

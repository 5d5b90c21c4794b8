// Child processes: the one place snapback starts a program. Used by
// snapback-launch's ranks (launcher/rank_group), by RunCommand (the scheduler
// adapters' scontrol / kubectl calls) and by the test fixtures (a child
// binary, a private Slurm cluster).
//
// Every child starts with an empty signal mask and every signal at its
// default disposition, whatever the caller blocks or ignores: snapback-launch
// blocks SIGINT/SIGTERM to read them from a signalfd, and gRPC processes
// ignore SIGPIPE; neither may leak into a child (see RankGroup's test with a
// blocking parent).
//
// Each child is watched through a pidfd: waiting has a deadline and needs no
// SIGCHLD handler, and signals sent through it cannot hit a recycled pid.
//
// Spawning is posix_spawn(3) (vfork-like, nothing runs in the child but the
// exec), except with OnExecFailure::kChildExits127, which needs a child that
// exists before the exec: there everything is built before fork() and the
// child only makes async-signal-safe calls.
#ifndef SNAPBACK_COMMON_PROCESS_H_
#define SNAPBACK_COMMON_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace snapback {

// Where one of a child's standard streams goes.
struct Stdio {
  enum class Kind {
    kInherit,       // the caller's stream
    kDevNull,       // /dev/null
    kFile,          // `path`: read for stdin; for output created or truncated
                    // (or appended to), mode 0644
    kPipe,          // a new pipe; the caller's end is Process::stdin_fd() etc.
    kFd,            // a copy of the caller's descriptor `fd`
    kSameAsStdout,  // stderr only: wherever stdout goes (2>&1)
  };
  Kind kind = Kind::kInherit;
  std::string path;
  bool append = false;
  int fd = -1;

  static Stdio Inherit() { return Stdio(); }
  static Stdio DevNull() { return Of(Kind::kDevNull); }
  static Stdio File(std::string path, bool append = false) {
    Stdio s = Of(Kind::kFile);
    s.path = std::move(path);
    s.append = append;
    return s;
  }
  static Stdio Pipe() { return Of(Kind::kPipe); }
  static Stdio Fd(int fd) {
    Stdio s = Of(Kind::kFd);
    s.fd = fd;
    return s;
  }
  static Stdio SameAsStdout() { return Of(Kind::kSameAsStdout); }

 private:
  static Stdio Of(Kind kind) {
    Stdio s;
    s.kind = kind;
    return s;
  }
};

// What happens when the program cannot be executed (missing, not
// executable, a bad interpreter line).
enum class OnExecFailure {
  // Spawn() fails: NOT_FOUND for a missing program, INTERNAL otherwise.
  kReturnError,
  // Spawn() succeeds and the child writes `exec_failure_message` and errno's
  // text to its stderr and exits with code 127, as a shell does. For callers
  // that treat "cannot execute" like any other failed run (a rank restarts).
  kChildExits127,
};

struct SpawnOptions {
  // Look argv[0] up in the caller's PATH when it has no '/'.
  // Default: true
  bool search_path = true;

  // Start from the caller's environment (false: only `env`).
  // Default: true
  bool inherit_env = true;
  // Names dropped from the inherited environment; an entry ending in '*'
  // drops every name with that prefix ("SLURM_*").
  // Default: {} (none)
  std::vector<std::string> unset_env;
  // Set in the child, replacing an inherited value of the same name.
  // Default: {} (none)
  std::map<std::string, std::string> env;

  // The child's stdin, stdout and stderr.
  // Default: Stdio::Inherit() for all three
  Stdio in;
  Stdio out;
  Stdio err;

  // Run the child in a process group of its own (its pgid = its pid), so
  // SignalGroup() reaches the processes it starts too, and a signal to the
  // caller's group (Ctrl-C) does not.
  // Default: false (the caller's group)
  bool new_process_group = false;

  // The child's working directory.
  // Default: "" (the caller's)
  std::string working_dir;

  // See OnExecFailure.
  // Default: OnExecFailure::kReturnError
  OnExecFailure on_exec_failure = OnExecFailure::kReturnError;
  // With kChildExits127: the start of the line the child writes to its
  // stderr, followed by ": " and errno's text.
  // Default: "cannot execute " + argv[0]
  std::string exec_failure_message;
};

// How a child ended.
struct ExitStatus {
  // The exit status when it exited, -1 when a signal killed it.
  int exit_code = -1;
  // The signal that killed it, 0 when it exited.
  int signal = 0;
};

// One child process: its pid, a pidfd on it, and the caller's ends of the
// pipes asked for.
//
// Destroying a Process whose child was not reaped SIGKILLs the child (its
// group too with new_process_group) and reaps it: a Process never leaves a
// zombie or an orphan behind. Owners that want a gentler stop signal first
// (SignalGroup(SIGTERM), WaitExited(grace)) and Reap().
//
// Movable, not copyable. Not thread-safe: one owner; the const methods may run
// in parallel.
class Process {
 public:
  // Starts argv. INVALID_ARGUMENT for an empty argv; NOT_FOUND when
  // argv[0] does not exist (the message names it and, with search_path, the
  // PATH it was looked up in); INTERNAL with errno's text when it exists but
  // cannot be started, or a pipe, file or pidfd could not be made (nothing is
  // left running then). With kChildExits127 only the last kind of error is
  // returned.
  static absl::StatusOr<Process> Spawn(const std::vector<std::string>& argv,
                                       const SpawnOptions& options = {});

  Process() = default;  // no child
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process();

  // -1 when there is no child.
  pid_t pid() const { return pid_; }
  // Readable (poll POLLIN) once the child has exited; -1 once it is reaped.
  int pidfd() const { return pidfd_; }
  // True while the child was spawned and not reaped.
  bool valid() const { return pid_ > 0 && !reaped_; }

  // The caller's end of a Stdio::Pipe() stream (close-on-exec, blocking),
  // or -1. Owned by the Process until released; Release*() hands it over.
  int stdin_fd() const { return in_fd_; }
  int stdout_fd() const { return out_fd_; }
  int stderr_fd() const { return err_fd_; }
  int ReleaseStdin();
  int ReleaseStdout();
  int ReleaseStderr();

  // Sends `sig` to the child through its pidfd. No effect once reaped.
  void Signal(int sig) const;
  // Sends `sig` to the child's process group (with new_process_group; the
  // group outlives an exited leader until it is reaped). No effect once
  // reaped.
  void SignalGroup(int sig) const;

  // True when the child has exited (it may not be reaped yet).
  bool HasExited() const;
  // Waits up to `timeout` for the child to exit; true when it has. Does not
  // reap.
  bool WaitExited(absl::Duration timeout) const;
  // Reaps the child when it has exited; nullopt while it runs (or when it
  // was reaped already).
  std::optional<ExitStatus> TryReap();
  // Waits for the child to exit and reaps it. Call it after a SIGKILL or
  // when the child is known to have exited.
  ExitStatus Reap();

 private:
  void CloseFds();
  void KillAndReap();

  pid_t pid_ = -1;
  int pidfd_ = -1;
  int in_fd_ = -1, out_fd_ = -1, err_fd_ = -1;
  bool own_group_ = false;
  bool reaped_ = false;
};

// A pidfd for any process (not only our children), -1 with errno set on
// failure. glibc 2.36's <sys/pidfd.h> lacks C linkage for C++ callers, so
// this is the one wrapper of the system call.
int PidfdOpen(pid_t pid);
// pidfd_send_signal(2): 0, or -1 with errno set.
int PidfdSendSignal(int pidfd, int sig);
// Waits up to `timeout` for the process behind `pidfd` to exit; true when
// it has.
bool WaitPidfd(int pidfd, absl::Duration timeout);

}  // namespace snapback

#endif  // SNAPBACK_COMMON_PROCESS_H_

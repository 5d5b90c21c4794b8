#include "failure-detector/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace snapback::detector {
namespace {

// glibc 2.36's <sys/pidfd.h> lacks C linkage for C++ callers.
int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Owns the file descriptors and spawn objects of one RunCommand call.
struct Fds {
  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
  int pidfd = -1;
  ~Fds() {
    for (int fd : {out[0], out[1], err[0], err[1], pidfd}) {
      if (fd >= 0) close(fd);
    }
  }
};

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// Reads what `fd` has now into `sink` (up to the cap). Closes and clears fd
// at EOF or on an error other than EAGAIN.
void Drain(int& fd, std::string& sink) {
  char buf[16384];
  while (fd >= 0) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      const size_t room = kMaxCommandOutput - std::min(kMaxCommandOutput, sink.size());
      sink.append(buf, std::min<size_t>(room, static_cast<size_t>(n)));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    CloseFd(fd);  // EOF or a real error: nothing more will come
  }
}

}  // namespace

std::string CommandResult::DescribeExit() const {
  if (signal != 0) {
    return absl::StrCat("killed by signal ", signal, " (", strsignal(signal), ")");
  }
  return absl::StrCat("exit code ", exit_code);
}

std::string ShellQuote(absl::string_view s) {
  const bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
           std::strchr("@%+=:,./_-", c) != nullptr;
  });
  if (plain) return std::string(s);
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += '\'';
  return out;
}

std::string CommandLine(const std::vector<std::string>& argv) {
  return absl::StrJoin(argv, " ", [](std::string* out, const std::string& a) {
    out->append(ShellQuote(a));
  });
}

std::string LastLines(absl::string_view text, int n) {
  std::vector<absl::string_view> lines =
      absl::StrSplit(text, absl::ByAnyChar("\r\n"), absl::SkipWhitespace());
  if (static_cast<int>(lines.size()) > n) lines.erase(lines.begin(), lines.end() - n);
  for (absl::string_view& l : lines) l = absl::StripAsciiWhitespace(l);
  std::string out = absl::StrJoin(lines, "; ");
  constexpr size_t kMax = 1000;
  if (out.size() > kMax) out = absl::StrCat("...", out.substr(out.size() - kMax));
  return out;
}

absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::map<std::string, std::string>& extra_env, absl::Duration timeout) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("RunCommand: an empty command");
  }
  const std::string cmdline = CommandLine(argv);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view kv(*e);
    if (extra_env.count(std::string(kv.substr(0, kv.find('=')))) > 0) continue;
    env_strings.emplace_back(kv);
  }
  for (const auto& [k, v] : extra_env) env_strings.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> envp, args;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  Fds fds;
  if (pipe2(fds.out, O_CLOEXEC) != 0 || pipe2(fds.err, O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot run `", cmdline, "`: pipe: ", strerror(errno)));
  }
  // Only our ends are non-blocking: after the command exits, Drain() must not
  // wait for a background process that still holds the write end.
  for (int fd : {fds.out[0], fds.err[0]}) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds.out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds.err[1], STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(
      &attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  // Ignored signals (gRPC ignores SIGPIPE) would otherwise stay ignored in
  // the command.
  posix_spawnattr_setsigdefault(&attr, &all);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  CloseFd(fds.out[1]);
  CloseFd(fds.err[1]);
  if (rc != 0) {
    const char* path = std::getenv("PATH");
    const std::string where =
        argv[0].find('/') != std::string::npos
            ? std::string()
            : absl::StrCat(" (looked up in PATH=", path ? path : "", ")");
    const std::string msg = absl::StrCat("cannot run `", argv[0], "`", where, ": ",
                                         strerror(rc), " (command: ", cmdline, ")");
    if (rc == ENOENT || rc == ENOTDIR) return absl::NotFoundError(msg);
    return absl::InternalError(msg);
  }

  fds.pidfd = PidfdOpen(pid);
  if (fds.pidfd < 0) {
    const int err = errno;
    kill(-pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return absl::InternalError(
        absl::StrCat("running `", cmdline, "`: pidfd_open: ", strerror(err)));
  }

  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  bool exited = false;
  while (!exited) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      kill(-pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      Drain(fds.err[0], result.err);
      const std::string tail = LastLines(result.err, 3);
      return absl::DeadlineExceededError(absl::StrCat(
          "`", cmdline, "` did not finish within ", absl::FormatDuration(timeout),
          "; killed it (SIGKILL to its process group)",
          tail.empty() ? "" : absl::StrCat("; its stderr ended with: ", tail)));
    }
    pollfd p[3];
    int n = 0;
    for (int fd : {fds.out[0], fds.err[0], fds.pidfd}) {
      if (fd >= 0) p[n++] = {fd, POLLIN, 0};
    }
    // Round up so that the last poll does not spin on a sub-millisecond rest.
    const int64_t ms = absl::ToInt64Milliseconds(left) + 1;
    const int ready = poll(p, n, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (ready < 0 && errno != EINTR) {
      const int err = errno;
      kill(-pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return absl::InternalError(
          absl::StrCat("running `", cmdline, "`: poll: ", strerror(err)));
    }
    // Pipes before the pidfd: all the command wrote before exiting is in them.
    Drain(fds.out[0], result.out);
    Drain(fds.err[0], result.err);
    for (int i = 0; i < n && ready > 0; ++i) {
      if (p[i].fd == fds.pidfd && p[i].revents != 0) exited = true;
    }
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    return absl::InternalError(
        absl::StrCat("running `", cmdline, "`: waitpid: ", strerror(errno)));
  }
  Drain(fds.out[0], result.out);
  Drain(fds.err[0], result.err);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

}  // namespace snapback::detector

#include "failure-detector/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/process.h"

namespace snapback::detector {
namespace {

// Our ends of the command's stdout and stderr pipes (Drain closes each at
// EOF).
struct Fds {
  int out = -1;
  int err = -1;
  ~Fds() {
    for (int fd : {out, err}) {
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

  SpawnOptions options;
  options.env = extra_env;
  options.in = Stdio::DevNull();
  options.out = Stdio::Pipe();
  options.err = Stdio::Pipe();
  options.new_process_group = true;
  absl::StatusOr<Process> spawned = Process::Spawn(argv, options);
  if (!spawned.ok()) {
    return absl::Status(
        spawned.status().code(),
        absl::StrCat(spawned.status().message(), " (command: ", cmdline, ")"));
  }
  Process& child = *spawned;
  Fds fds;
  fds.out = child.ReleaseStdout();
  fds.err = child.ReleaseStderr();
  // Only our ends are non-blocking: after the command exits, Drain() must not
  // wait for a background process that still holds the write end.
  for (int fd : {fds.out, fds.err}) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }

  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  bool exited = false;
  while (!exited) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      child.SignalGroup(SIGKILL);
      child.Reap();
      Drain(fds.err, result.err);
      const std::string tail = LastLines(result.err, 3);
      return absl::DeadlineExceededError(absl::StrCat(
          "`", cmdline, "` did not finish within ", absl::FormatDuration(timeout),
          "; killed it (SIGKILL to its process group)",
          tail.empty() ? "" : absl::StrCat("; its stderr ended with: ", tail)));
    }
    pollfd p[3];
    int n = 0;
    for (int fd : {fds.out, fds.err, child.pidfd()}) {
      if (fd >= 0) p[n++] = {fd, POLLIN, 0};
    }
    // Round up so that the last poll does not spin on a sub-millisecond rest.
    const int64_t ms = absl::ToInt64Milliseconds(left) + 1;
    const int ready = poll(p, n, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (ready < 0 && errno != EINTR) {
      const int err = errno;
      child.SignalGroup(SIGKILL);
      child.Reap();
      return absl::InternalError(
          absl::StrCat("running `", cmdline, "`: poll: ", strerror(err)));
    }
    // Pipes before the pidfd: all the command wrote before exiting is in them.
    Drain(fds.out, result.out);
    Drain(fds.err, result.err);
    for (int i = 0; i < n && ready > 0; ++i) {
      if (p[i].fd == child.pidfd() && p[i].revents != 0) exited = true;
    }
  }
  const ExitStatus status = child.Reap();
  Drain(fds.out, result.out);
  Drain(fds.err, result.err);
  result.exit_code = status.exit_code;
  result.signal = status.signal;
  return result;
}

}  // namespace snapback::detector

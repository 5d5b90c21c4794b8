#include "common/process.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using ::snapback::testing::Slurp;

using ::testing::HasSubstr;

// Everything the child writes to `fd` until EOF (or 10 s pass).
std::string ReadAll(int fd) {
  std::string out;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  char buf[4096];
  while (absl::Now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// One line from `fd` (without the newline).
std::string ReadLine(int fd) {
  std::string out;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') out += c;
  return out;
}

// Both ways of spawning: posix_spawn, and fork+exec for kChildExits127.
class ProcessTest : public ::testing::TestWithParam<OnExecFailure> {
 protected:
  SpawnOptions Options() {
    SpawnOptions o;
    o.on_exec_failure = GetParam();
    return o;
  }
};

TEST_P(ProcessTest, CapturesOutputAndExitCode) {
  SpawnOptions o = Options();
  o.out = Stdio::Pipe();
  o.err = Stdio::Pipe();
  auto p = Process::Spawn({"sh", "-c", "echo out; echo err >&2; exit 3"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_GT(p->pid(), 0);
  EXPECT_GE(p->pidfd(), 0);
  EXPECT_EQ(ReadAll(p->stdout_fd()), "out\n");
  EXPECT_EQ(ReadAll(p->stderr_fd()), "err\n");
  ASSERT_TRUE(p->WaitExited(absl::Seconds(10)));
  EXPECT_TRUE(p->HasExited());
  const std::optional<ExitStatus> e = p->TryReap();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, 3);
  EXPECT_EQ(e->signal, 0);
  EXPECT_FALSE(p->valid());
  EXPECT_EQ(p->pidfd(), -1);
  EXPECT_FALSE(p->TryReap().has_value()) << "reaped once only";
}

TEST_P(ProcessTest, EnvironmentIsInheritedAddedToAndFiltered) {
  setenv("SNAPBACK_PT_KEEP", "kept", 1);
  setenv("SNAPBACK_PT_DROP", "dropped", 1);
  setenv("SNAPBACK_PT_REPLACE", "old", 1);
  setenv("PTPREFIX_A", "a", 1);
  SpawnOptions o = Options();
  o.out = Stdio::Pipe();
  o.unset_env = {"SNAPBACK_PT_DROP", "PTPREFIX_*"};
  o.env = {{"SNAPBACK_PT_ADDED", "added"}, {"SNAPBACK_PT_REPLACE", "new"}};
  auto p = Process::Spawn(
      {"sh", "-c",
       "echo \"$SNAPBACK_PT_KEEP|$SNAPBACK_PT_DROP|$PTPREFIX_A|$SNAPBACK_PT_ADDED|"
       "$SNAPBACK_PT_REPLACE\""},
      o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(ReadAll(p->stdout_fd()), "kept|||added|new\n");
  EXPECT_EQ(p->Reap().exit_code, 0);

  // Not inherited: only what the options set (argv[0] a path, no PATH).
  SpawnOptions bare = Options();
  bare.out = Stdio::Pipe();
  bare.search_path = false;
  bare.inherit_env = false;
  bare.env = {{"ONLY", "this"}};
  auto q = Process::Spawn({"/usr/bin/env"}, bare);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(ReadAll(q->stdout_fd()), "ONLY=this\n");
  EXPECT_EQ(q->Reap().exit_code, 0);
  for (const char* name :
       {"SNAPBACK_PT_KEEP", "SNAPBACK_PT_DROP", "SNAPBACK_PT_REPLACE", "PTPREFIX_A"}) {
    unsetenv(name);
  }
}

TEST_P(ProcessTest, StdinPipeStdoutFileStderrToStdoutAndWorkingDir) {
  testing::TempDir dir;
  SpawnOptions o = Options();
  o.in = Stdio::Pipe();
  o.out = Stdio::File(dir.path() + "/out");
  o.err = Stdio::SameAsStdout();
  o.working_dir = dir.path();
  auto p = Process::Spawn({"sh", "-c", "cat; pwd; echo to-stderr >&2"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  const int in = p->ReleaseStdin();
  ASSERT_GE(in, 0);
  EXPECT_EQ(p->stdin_fd(), -1);
  ASSERT_EQ(write(in, "piped\n", 6), 6);
  close(in);
  EXPECT_EQ(p->Reap().exit_code, 0);
  char real[4096];
  ASSERT_NE(realpath(dir.path().c_str(), real), nullptr);
  EXPECT_EQ(Slurp(dir.path() + "/out"), "piped\n" + std::string(real) + "\nto-stderr\n");

  // Appending, and stdin from /dev/null.
  o.in = Stdio::DevNull();
  o.out = Stdio::File(dir.path() + "/out", /*append=*/true);
  o.err = Stdio::DevNull();
  auto q = Process::Spawn({"sh", "-c", "cat; echo more; echo hidden >&2"}, o);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->Reap().exit_code, 0);
  EXPECT_EQ(Slurp(dir.path() + "/out"),
            "piped\n" + std::string(real) + "\nto-stderr\nmore\n");
}

TEST_P(ProcessTest, ChildGetsNoBlockedOrIgnoredSignalsFromItsParent) {
  // As snapback-launch does (signalfd), and as gRPC does with SIGPIPE.
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old_mask);
  struct sigaction ign = {}, old_usr1 = {};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGUSR1, &ign, &old_usr1);

  for (int sig : {SIGTERM, SIGUSR1}) {
    SCOPED_TRACE(strsignal(sig));
    SpawnOptions o = Options();
    o.out = Stdio::Pipe();
    auto p = Process::Spawn({"sh", "-c", "echo ready; exec sleep 60"}, o);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(ReadLine(p->stdout_fd()), "ready");
    p->Signal(sig);
    ASSERT_TRUE(p->WaitExited(absl::Seconds(10))) << "the signal did not end it";
    const ExitStatus e = p->Reap();
    EXPECT_EQ(e.signal, sig);
    EXPECT_EQ(e.exit_code, -1);
  }
  sigaction(SIGUSR1, &old_usr1, nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
}

TEST_P(ProcessTest, OwnProcessGroupIsSignalledAsAWhole) {
  SpawnOptions o = Options();
  o.out = Stdio::Pipe();
  o.new_process_group = true;
  auto p = Process::Spawn({"sh", "-c", "sleep 60 & echo $!; wait"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(getpgid(p->pid()), p->pid());
  const pid_t grandchild = std::stoi(ReadLine(p->stdout_fd()));
  EXPECT_EQ(getpgid(grandchild), p->pid());
  EXPECT_FALSE(p->WaitExited(absl::Milliseconds(50)));
  p->SignalGroup(SIGTERM);
  ASSERT_TRUE(p->WaitExited(absl::Seconds(10)));
  EXPECT_EQ(p->Reap().signal, SIGTERM);
  // The grandchild got it too: its end closes the pipe.
  EXPECT_EQ(ReadAll(p->stdout_fd()), "");

  // Without one, the child stays in ours.
  SpawnOptions same = Options();
  auto q = Process::Spawn({"sleep", "60"}, same);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(getpgid(q->pid()), getpgrp());
}

TEST_P(ProcessTest, DestroyingARunningProcessKillsAndReapsIt) {
  pid_t pid;
  {
    auto p = Process::Spawn({"sleep", "60"}, Options());
    ASSERT_TRUE(p.ok()) << p.status();
    pid = p->pid();
    Process moved = std::move(*p);
    EXPECT_EQ(p->pid(), -1);
    EXPECT_EQ(moved.pid(), pid);
  }
  // Reaped: not even a zombie is left.
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(Process, MissingProgramIsNotFound) {
  auto p = Process::Spawn({"snapback-no-such-program", "x"});
  ASSERT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr("snapback-no-such-program"));
  EXPECT_THAT(p.status().message(), HasSubstr("looked up in PATH="));
  EXPECT_THAT(p.status().message(), HasSubstr("No such file or directory"));

  SpawnOptions no_path;
  no_path.search_path = false;
  EXPECT_EQ(Process::Spawn({"/nonexistent/prog"}, no_path).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Process::Spawn({}).status().code(), absl::StatusCode::kInvalidArgument);

  SpawnOptions bad_dir;
  bad_dir.out = Stdio::File("/nonexistent-dir/out");
  auto q = Process::Spawn({"true"}, bad_dir);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(q.status().message(), HasSubstr("/nonexistent-dir/out"));
}

TEST(Process, MissingProgramExits127WhenAskedTo) {
  SpawnOptions o;
  o.on_exec_failure = OnExecFailure::kChildExits127;
  o.exec_failure_message = "test: cannot execute the rank command";
  o.err = Stdio::Pipe();
  auto p = Process::Spawn({"snapback-no-such-program"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(ReadAll(p->stderr_fd()),
            "test: cannot execute the rank command: No such file or directory\n");
  const ExitStatus e = p->Reap();
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(e.signal, 0);
}

TEST(Process, PidfdHelpersWorkOnAnyChild) {
  auto p = Process::Spawn({"sleep", "60"});
  ASSERT_TRUE(p.ok()) << p.status();
  const int fd = PidfdOpen(p->pid());
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(WaitPidfd(fd, absl::Milliseconds(20)));
  ASSERT_EQ(PidfdSendSignal(fd, SIGKILL), 0);
  EXPECT_TRUE(WaitPidfd(fd, absl::Seconds(10)));
  close(fd);
  EXPECT_EQ(p->Reap().signal, SIGKILL);
}

INSTANTIATE_TEST_SUITE_P(BothSpawnPaths, ProcessTest,
                         ::testing::Values(OnExecFailure::kReturnError,
                                           OnExecFailure::kChildExits127),
                         [](const ::testing::TestParamInfo<OnExecFailure>& info) {
                           return info.param == OnExecFailure::kReturnError
                                      ? std::string("PosixSpawn")
                                      : std::string("ForkExec");
                         });

}  // namespace
}  // namespace snapback

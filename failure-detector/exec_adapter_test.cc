// The exec scheduler adapter and RunCommand under it, with real shell
// scripts in a temporary directory.
#include "failure-detector/exec_adapter.h"

#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "failure-detector/command.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/test_util.h"

namespace snapback::detector {
namespace {

using ::snapback::testing::Slurp;

using ::testing::HasSubstr;
using testing::TempDir;

// Writes an executable script.
std::string WriteScript(const std::string& dir, const std::string& name,
                        const std::string& body) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << "#!/bin/sh\n" << body;
  chmod(path.c_str(), 0755);
  return path;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// True once process `pid` (not our child) has exited, waiting up to `timeout`
// on a pidfd, not by polling.
bool ExitsWithin(pid_t pid, absl::Duration timeout) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;  // already gone and reaped
  pollfd p{fd, POLLIN, 0};
  const int rc = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  close(fd);
  return rc == 1;
}

// ExecAdapterOptions with the given templates (designated initializers would
// trip -Wmissing-field-initializers).
ExecAdapterOptions Templates(std::string restart, std::string cancel = "",
                             std::string status = "",
                             absl::Duration timeout = absl::Seconds(30)) {
  ExecAdapterOptions o;
  o.restart_command = std::move(restart);
  o.cancel_command = std::move(cancel);
  o.status_command = std::move(status);
  o.timeout = timeout;
  return o;
}

JobBinding Job() {
  return {.job_id = "train-7",
          .world_size = 8,
          .scheduler = "exec",
          .scheduler_job_id = "k8s/train 7"};
}

TEST(RunCommand, CapturesOutputExitCodeAndEnvironment) {
  auto r = RunCommand({"sh", "-c", "echo out $FOO; echo err >&2; exit 3"},
                      {{"FOO", "bar"}}, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out, "out bar\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->signal, 0);
  EXPECT_FALSE(r->success());
  EXPECT_EQ(r->DescribeExit(), "exit code 3");

  // More than a pipe's buffer on both streams at once must not deadlock.
  r = RunCommand({"sh", "-c", "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"},
                 {}, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out.size(), 300000u);
  EXPECT_EQ(r->err.size(), 300000u);
  EXPECT_TRUE(r->success());

  r = RunCommand({"sh", "-c", "kill -TERM $$"}, {}, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->signal, SIGTERM);
  EXPECT_EQ(r->exit_code, -1);
}

TEST(RunCommand, ACommandThatCannotStartSaysWhichAndWhy) {
  auto r = RunCommand({"snapback-no-such-command", "x"}, {}, absl::Seconds(10));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("snapback-no-such-command"));
  EXPECT_THAT(r.status().message(), HasSubstr("No such file or directory"));

  TempDir dir;
  const std::string not_executable = dir.path() + "/data";
  std::ofstream(not_executable) << "not a program\n";
  r = RunCommand({not_executable}, {}, absl::Seconds(10));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInternal) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(not_executable));
  EXPECT_THAT(r.status().message(), HasSubstr("Permission denied"));

  EXPECT_EQ(RunCommand({}, {}, absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RunCommand, TimeoutKillsTheWholeProcessGroup) {
  TempDir dir;
  const std::string pidfile = dir.path() + "/pid";
  const absl::Time t0 = absl::Now();
  // The child leaves a grandchild holding the pipes: both must die.
  auto r = RunCommand({"sh", "-c", "sleep 60 & echo $! > " + pidfile + "; wait"}, {},
                      absl::Milliseconds(500));
  const absl::Duration took = absl::Now() - t0;
  ASSERT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("sleep 60"));
  EXPECT_THAT(r.status().message(), HasSubstr("did not finish within 500ms"));
  EXPECT_GE(took, absl::Milliseconds(500));
  EXPECT_LT(took, absl::Seconds(5));
  const pid_t grandchild = std::stoi(Slurp(pidfile));
  EXPECT_TRUE(ExitsWithin(grandchild, absl::Seconds(5)));
}

TEST(RunCommand, ReturnsWhenTheCommandExitsEvenIfABackgroundChildKeepsThePipe) {
  TempDir dir;
  const std::string pidfile = dir.path() + "/pid";
  const absl::Time t0 = absl::Now();
  auto r = RunCommand(
      {"sh", "-c", "echo before; sleep 60 & echo $! > " + pidfile + "; exit 0"}, {},
      absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(r->out, "before\n");
  kill(std::stoi(Slurp(pidfile)), SIGKILL);
}

TEST(ShellQuote, TheShellReadsBackExactlyTheString) {
  EXPECT_EQ(ShellQuote("plain-word_1.2/x:y@z%+=,"), "plain-word_1.2/x:y@z%+=,");
  EXPECT_EQ(ShellQuote(""), "''");
  EXPECT_EQ(ShellQuote("it's"), "'it'\\''s'");
  for (const std::string s : {"", "a b", "it's", "'", "''", "$(id)", "`id`", "a;b|c&d",
                              "x\ny", "$HOME", "\\", "\"q\"", "*", "~", "{job}", "-n"}) {
    auto r =
        RunCommand({"sh", "-c", "printf '%s' " + ShellQuote(s)}, {}, absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->out, s) << "quoted as " << ShellQuote(s);
  }
}

TEST(ExecAdapter, PlaceholdersAreSubstitutedAsSingleWords) {
  TempDir dir;
  const std::string out = dir.path() + "/args";
  const std::string script = WriteScript(
      dir.path(), "restart.sh",
      "echo $# > " + out + "\nfor a in \"$@\"; do echo \"[$a]\" >> " + out + "; done\n");
  ExecAdapter a(Templates(
      script + " {job} {scheduler_job_id} {incarnation} {world_size} {reason} {unknown}",
      script + " {job} {incarnation} {reason}"));
  EXPECT_EQ(a.name(), "exec");
  ASSERT_TRUE(a.Restart(Job(), 42, "rank 3 died").ok());
  EXPECT_EQ(Slurp(out),
            "6\n[train-7]\n[k8s/train 7]\n[42]\n[8]\n[rank 3 died]\n[{unknown}]\n");

  ASSERT_TRUE(a.Cancel(Job(), "operator").ok());
  EXPECT_EQ(Slurp(out), "3\n[train-7]\n[]\n[operator]\n");
}

TEST(ExecAdapter, AnInjectionAttemptInTheReasonIsInert) {
  TempDir dir;
  const std::string out = dir.path() + "/reason";
  const std::string pwned = dir.path() + "/pwned";
  ExecAdapter a(Templates("printf '%s' {reason} > " + out));
  for (const std::string& reason : std::vector<std::string>{
           "x'; touch " + pwned + "; echo '", "$(touch " + pwned + ")",
           "`touch " + pwned + "`", "a\" ; touch " + pwned + " ; \"", "{job} {reason}",
           "; touch " + pwned, "\n touch " + pwned}) {
    ASSERT_TRUE(a.Restart(Job(), 1, reason).ok()) << reason;
    EXPECT_EQ(Slurp(out), reason);
    EXPECT_FALSE(Exists(pwned)) << "injected by: " << reason;
  }
}

TEST(ExecAdapter, FailuresMapToCodesTheCallerCanActOn) {
  TempDir dir;
  const std::string fail = WriteScript(dir.path(), "fail.sh",
                                       "echo progress\necho 'line 1' >&2\necho 'error: "
                                       "job {job} not found' >&2\nexit 3\n");
  ExecAdapter a(Templates(fail + " {job}"));
  absl::Status s = a.Restart(Job(), 2, "r");
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("error: job {job} not found"));
  EXPECT_THAT(s.message(), HasSubstr("exit code 3"));
  EXPECT_THAT(s.message(), HasSubstr("restart"));

  s = a.Cancel(Job(), "r");
  ASSERT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(s.message(), HasSubstr("--exec-cancel-command"));
  auto st = a.Status(Job());
  ASSERT_EQ(st.status().code(), absl::StatusCode::kUnimplemented) << st.status();
  EXPECT_THAT(st.status().message(), HasSubstr("--exec-status-command"));
  EXPECT_EQ(ExecAdapter(ExecAdapterOptions()).Restart(Job(), 1, "r").code(),
            absl::StatusCode::kUnimplemented);

  ExecAdapter killed(Templates("kill -KILL $$"));
  s = killed.Restart(Job(), 1, "r");
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("killed by signal 9"));
}

TEST(ExecAdapter, ACommandThatHangsIsKilledAtTheTimeout) {
  TempDir dir;
  const std::string pidfile = dir.path() + "/pid";
  ExecAdapter a(Templates("sleep 60 & echo $! > " + pidfile + "; wait", "", "",
                          absl::Milliseconds(300)));
  const absl::Time t0 = absl::Now();
  absl::Status s = a.Restart(Job(), 1, "r");
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("timed out"));
  EXPECT_THAT(s.message(), HasSubstr("300ms"));
  EXPECT_TRUE(ExitsWithin(std::stoi(Slurp(pidfile)), absl::Seconds(5)));
}

TEST(ExecAdapter, StatusReadsTheFirstWordOfStdout) {
  TempDir dir;
  const std::string state_file = dir.path() + "/state";
  ExecAdapter a(Templates("", "", "cat " + state_file + "; test {job} = train-7"));
  struct Case {
    std::string printed;
    SchedulerJobState want;
  };
  for (const Case& c : std::vector<Case>{
           {"pending\n", SchedulerJobState::kPending},
           {"  Running since 5m (pod train-7-0)\n", SchedulerJobState::kRunning},
           {"FINISHED", SchedulerJobState::kFinished},
           {"failed\tBackoffLimitExceeded\n", SchedulerJobState::kFailed},
           {"cancelled\n", SchedulerJobState::kCancelled},
           {"Succeeded\n", SchedulerJobState::kUnknown},
           {"", SchedulerJobState::kUnknown},
       }) {
    std::ofstream(state_file) << c.printed;
    auto st = a.Status(Job());
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->state, c.want)
        << "printed: " << c.printed << " -> " << SchedulerJobStateName(st->state);
    if (c.want == SchedulerJobState::kUnknown) {
      EXPECT_THAT(st->detail, HasSubstr("expected pending, running"));
    } else {
      EXPECT_THAT(c.printed, HasSubstr(st->detail));
    }
  }
}

TEST(SchedulerJobStateName, NamesEveryState) {
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kUnknown), "unknown");
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kPending), "pending");
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kRunning), "running");
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kFinished), "finished");
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kFailed), "failed");
  EXPECT_STREQ(SchedulerJobStateName(SchedulerJobState::kCancelled), "cancelled");
}

}  // namespace
}  // namespace snapback::detector

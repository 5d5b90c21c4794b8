#include "testing/slurm_cluster.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "failure-detector/command.h"

namespace snapback::testing {
namespace {

using detector::CommandResult;
using detector::RunCommand;

// `name` in PATH or in the sbin directories (which a non-login root shell,
// or ctest's environment, may leave out of PATH); "" when absent.
std::string FindBinary(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::vector<std::string> dirs =
      absl::StrSplit(path ? path : "", ':', absl::SkipEmpty());
  for (const char* d : {"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"}) {
    dirs.push_back(d);
  }
  for (const std::string& d : dirs) {
    const std::string p = d + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// True when nothing listens on (or holds) TCP `port` on any address.
bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as slurmctld does
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

// A free port below the kernel's ephemeral range (32768+), so that an
// outgoing connection does not take it between this check and the daemon's
// bind. 0 when none was found.
int PickPort(std::mt19937& rng, int avoid) {
  for (int i = 0; i < 200; ++i) {
    const int port = 20000 + static_cast<int>(rng() % 12000);
    if (port != avoid && PortFree(port)) return port;
  }
  return 0;
}

std::string TailFile(const std::string& path, int lines) {
  std::ifstream f(path);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<std::string> all = absl::StrSplit(ss.str(), '\n', absl::SkipWhitespace());
  if (static_cast<int>(all.size()) > lines) all.erase(all.begin(), all.end() - lines);
  return absl::StrJoin(all, "\n");
}

absl::Status WriteFile(const std::string& path, const std::string& data, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", path, ": ", strerror(errno)));
  }
  const bool ok =
      write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  close(fd);
  if (!ok) return absl::FailedPreconditionError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status MakeDir(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", path, ": ", strerror(errno)));
  }
  chmod(path.c_str(), mode);  // mkdir's mode is filtered by the umask
  return absl::OkStatus();
}

// The value of `key`= in one line of `scontrol show job -o`.
std::string ShowJobField(absl::string_view out, absl::string_view key) {
  for (absl::string_view token : absl::StrSplit(out, absl::ByAnyChar(" \n"))) {
    if (absl::ConsumePrefix(&token, key) && absl::ConsumePrefix(&token, "=")) {
      return std::string(token);
    }
  }
  return "";
}

}  // namespace

SlurmCluster::SlurmCluster(std::string dir) : dir_(std::move(dir)) {}

SlurmCluster::~SlurmCluster() { Stop(); }

absl::StatusOr<std::unique_ptr<SlurmCluster>> SlurmCluster::Start(
    const std::string& dir) {
  if (geteuid() != 0) {
    return absl::FailedPreconditionError(
        "a private Slurm cluster needs root (SlurmUser=root, and slurmd runs jobs as "
        "their submitter)");
  }
  std::map<std::string, std::string> bin;
  for (const char* name :
       {"munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel"}) {
    bin[name] = FindBinary(name);
    if (bin[name].empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(name,
                       " is not installed (./dev deps installs slurmctld, slurmd, "
                       "slurm-client and munge)"));
    }
  }
  // The longest socket path is slurmd's per-step socket in the spool dir:
  // <dir>/spool/<node>_<job>.<step>; sun_path holds 107 bytes.
  if (dir.size() > 60) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster directory ", dir,
                     " is too long for the daemons' Unix sockets (keep it under 60 "
                     "characters, e.g. set TEST_TMPDIR=/tmp)"));
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("gethostname: ", strerror(errno)));
  }
  // slurmctld and slurmd recognise themselves by the short hostname.
  const std::string node(
      absl::string_view(host).substr(0, absl::string_view(host).find('.')));

  std::unique_ptr<SlurmCluster> c(new SlurmCluster(dir));
  c->node_ = node;
  c->conf_path_ = dir + "/slurm.conf";
  c->env_ = {{"SLURM_CONF", c->conf_path_}};
  c->sbatch_ = bin["sbatch"];
  c->scontrol_ = bin["scontrol"];

  // munged refuses a socket in a directory that not everyone can search.
  if (chmod(dir.c_str(), 0711) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("chmod 0711 ", dir, ": ", strerror(errno)));
  }
  for (const char* sub : {"/munge", "/state", "/spool"}) {
    SNAPBACK_RETURN_IF_ERROR(MakeDir(dir + sub, 0755));
  }
  std::string key(1024, '\0');
  if (getrandom(key.data(), key.size(), 0) != static_cast<ssize_t>(key.size())) {
    return absl::FailedPreconditionError(absl::StrCat("getrandom: ", strerror(errno)));
  }
  SNAPBACK_RETURN_IF_ERROR(WriteFile(dir + "/munge.key", key, 0400));

  std::mt19937 rng(static_cast<uint32_t>(getpid() ^ absl::ToUnixNanos(absl::Now())));
  c->ctld_port_ = PickPort(rng, 0);
  const int slurmd_port = PickPort(rng, c->ctld_port_);
  if (c->ctld_port_ == 0 || slurmd_port == 0) {
    return absl::FailedPreconditionError("no free TCP port in 20000-31999 for Slurm");
  }
  const std::string munge_socket = dir + "/munge/munge.socket";
  const int cpus =
      std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 2);
  const std::string conf = absl::StrCat(
      "# Private test cluster of snapback (tests/slurm_cluster.cc).\n",
      "ClusterName=snapback-test\n", "SlurmctldHost=", node, "(127.0.0.1)\n",
      "SlurmctldPort=", c->ctld_port_, "\n", "SlurmdPort=", slurmd_port, "\n",
      "AuthType=auth/munge\n", "CredType=cred/munge\n",
      // cred_expire also holds a requeued job back for cred_expire + 1 s; 5
      // is the smallest value Slurm accepts (it falls back to 120 below).
      "AuthInfo=socket=", munge_socket, ",cred_expire=5\n",
      // The backfill pass starts the requeued job: every second, not 30.
      "SchedulerType=sched/backfill\n", "SchedulerParameters=bf_interval=1\n",
      "SlurmUser=root\n", "SlurmdUser=root\n", "StateSaveLocation=", dir, "/state\n",
      "SlurmdSpoolDir=", dir, "/spool\n", "SlurmctldPidFile=", dir, "/slurmctld.pid\n",
      "SlurmdPidFile=", dir, "/slurmd.pid\n", "SlurmctldLogFile=", dir,
      "/slurmctld.log\n", "SlurmdLogFile=", dir, "/slurmd.log\n", "SlurmdTimeout=10\n",
      "KillWait=5\n",
      // No cgroups in containers and small VMs.
      "ProctrackType=proctrack/linuxproc\n", "TaskPlugin=task/none\n", "JobRequeue=1\n",
      "SelectType=select/cons_tres\n", "SelectTypeParameters=CR_Core\n",
      "ReturnToService=2\n", "MpiDefault=none\n", "JobCompType=jobcomp/none\n",
      "AccountingStorageType=accounting_storage/none\n", "NodeName=", node,
      " NodeAddr=127.0.0.1 CPUs=", cpus, " RealMemory=1000 State=UNKNOWN\n",
      "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n");
  SNAPBACK_RETURN_IF_ERROR(WriteFile(c->conf_path_, conf, 0644));

  // Any error below returns `c`, whose destructor stops what was started.
  SNAPBACK_RETURN_IF_ERROR(c->StartDaemon(
      "munged",
      {bin["munged"], "--foreground", "--key-file=" + dir + "/munge.key",
       "--socket=" + munge_socket, "--pid-file=" + dir + "/munged.pid",
       "--log-file=" + dir + "/munged.log", "--seed-file=" + dir + "/munged.seed"}));
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  struct stat st;
  while (stat(munge_socket.c_str(), &st) != 0) {
    SNAPBACK_RETURN_IF_ERROR(c->CheckAlive());
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("munged did not create ", munge_socket, "\n", c->LogTail()));
    }
    c->WaitOnDaemons(absl::Milliseconds(10));
  }
  // -c: no state from an earlier run; -i: ignore unreadable state files.
  SNAPBACK_RETURN_IF_ERROR(c->StartDaemon(
      "slurmctld", {bin["slurmctld"], "-D", "-c", "-i", "-f", c->conf_path_}));
  SNAPBACK_RETURN_IF_ERROR(
      c->StartDaemon("slurmd", {bin["slurmd"], "-D", "-f", c->conf_path_, "-N", node}));

  std::string last;
  while (true) {
    SNAPBACK_RETURN_IF_ERROR(c->CheckAlive());
    absl::StatusOr<CommandResult> r = RunCommand(
        {bin["sinfo"], "-h", "-N", "-n", node, "-o", "%T"}, c->env_, absl::Seconds(15));
    if (r.ok() && r->success() && absl::StripAsciiWhitespace(r->out) == "idle") break;
    last = r.ok() ? absl::StrCat(r->out, r->err) : std::string(r.status().message());
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the Slurm node ", node, " did not become idle within 60 s; sinfo: ", last,
          "\n", c->LogTail()));
    }
    c->WaitOnDaemons(absl::Milliseconds(100));
  }
  return c;
}

absl::Status SlurmCluster::StartDaemon(const std::string& name,
                                       std::vector<std::string> argv) {
  Daemon d;
  d.name = name;
  d.out_path = dir_ + "/" + name + ".out";
  SpawnOptions options;
  options.search_path = false;
  // The daemons (and so slurmstepd and the jobs) get this cluster's
  // SLURM_CONF and no other SLURM_* (the test may itself run under Slurm).
  options.unset_env = {"SLURM_*"};
  options.env = {{"SLURM_CONF", conf_path_}};
  options.in = Stdio::DevNull();
  options.out = Stdio::File(d.out_path);
  options.err = Stdio::SameAsStdout();
  options.new_process_group = true;
  absl::StatusOr<Process> process = Process::Spawn(argv, options);
  if (!process.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot start ", name, ": ", process.status().message()));
  }
  d.process = *std::move(process);
  daemons_.push_back(std::move(d));
  return absl::OkStatus();
}

absl::Status SlurmCluster::CheckAlive() const {
  for (const Daemon& d : daemons_) {
    if (!d.process.HasExited()) continue;
    const std::string said = absl::StrCat(TailFile(d.out_path, 15), "\n", LogTail());
    const std::string msg =
        absl::StrCat(d.name, " exited during start-up; its output:\n", said);
    // Only what this machine does not allow is a reason to skip; any other
    // exit (a bad slurm.conf, say) is a bug of this fixture and must fail.
    for (const char* env_problem :
         {"Address already in use", "Permission denied", "Operation not permitted",
          "is inaccessible", "is insecure", "Cannot assign requested address"}) {
      if (absl::StrContains(said, env_problem)) return absl::FailedPreconditionError(msg);
    }
    return absl::InternalError(msg);
  }
  return absl::OkStatus();
}

void SlurmCluster::WaitOnDaemons(absl::Duration timeout) const {
  std::vector<pollfd> fds;
  for (const Daemon& d : daemons_) fds.push_back({d.process.pidfd(), POLLIN, 0});
  poll(fds.data(), fds.size(), static_cast<int>(absl::ToInt64Milliseconds(timeout)));
}

void SlurmCluster::StopDaemon(Daemon& d, absl::Duration grace) {
  if (!d.process.valid()) return;
  d.process.SignalGroup(SIGTERM);
  d.process.WaitExited(grace);
  // Before the reap, while the (possibly dead) leader still holds its pid as
  // the group id: the rest of its group (slurmctld's slurmscriptd) goes too.
  d.process.SignalGroup(SIGKILL);
  d.process.Reap();
}

void SlurmCluster::KillLeftovers() {
  const std::string needle = "SLURM_CONF=" + conf_path_;
  // A few rounds: a dying slurmstepd may have forked just before the scan.
  for (int round = 0; round < 5; ++round) {
    std::vector<int> pidfds;
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return;
    while (dirent* e = readdir(proc)) {
      int pid = 0;
      if (!absl::SimpleAtoi(e->d_name, &pid) || pid == getpid()) continue;
      std::ifstream f(absl::StrCat("/proc/", pid, "/environ"), std::ios::binary);
      std::stringstream ss;
      ss << f.rdbuf();
      bool ours = false;
      for (absl::string_view kv : absl::StrSplit(ss.str(), '\0')) ours |= kv == needle;
      if (!ours) continue;
      const int fd = PidfdOpen(pid);  // signals go to this process, even if pids wrap
      if (fd < 0) continue;
      PidfdSendSignal(fd, SIGKILL);
      pidfds.push_back(fd);
    }
    closedir(proc);
    if (pidfds.empty()) return;
    for (int fd : pidfds) {
      WaitPidfd(fd, absl::Seconds(5));
      close(fd);
    }
  }
}

void SlurmCluster::Stop() {
  if (daemons_.empty()) return;
  // One at a time, slurmd first: a slurmd whose slurmctld is already gone
  // spends ~9 s retrying its goodbye (42 ms in this order). munged last: the
  // others' shutdown still talks through it. slurmd leaves running job steps
  // alone: they are the leftovers killed below.
  for (auto it = daemons_.rbegin(); it != daemons_.rend(); ++it) {
    if (it->name != "munged") StopDaemon(*it, absl::Seconds(10));
  }
  KillLeftovers();
  for (Daemon& d : daemons_) StopDaemon(d, absl::Seconds(5));
  daemons_.clear();
}

absl::StatusOr<std::string> SlurmCluster::Sbatch(
    const std::string& script_path, const std::vector<std::string>& extra_args) const {
  std::vector<std::string> argv = {sbatch_, "--parsable", "--requeue",
                                   "--output=" + dir_ + "/slurm-%j.out"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  argv.push_back(script_path);
  SNAPBACK_ASSIGN_OR_RETURN(CommandResult r, RunCommand(argv, env_, absl::Seconds(30)));
  // --parsable prints "<id>" or "<id>;<cluster>".
  const std::string id(absl::StripAsciiWhitespace(r.out.substr(0, r.out.find(';'))));
  if (!r.success() || id.empty()) {
    return absl::InternalError(absl::StrCat("`", detector::CommandLine(argv),
                                            "` failed (", r.DescribeExit(), "): ", r.err,
                                            r.out));
  }
  return id;
}

absl::StatusOr<std::string> SlurmCluster::JobState(const std::string& job_id) const {
  SNAPBACK_ASSIGN_OR_RETURN(
      CommandResult r,
      RunCommand({scontrol_, "show", "job", "-o", job_id}, env_, absl::Seconds(30)));
  if (absl::StrContains(r.err, "Invalid job id")) {
    return absl::NotFoundError(absl::StrCat("Slurm does not know job ", job_id));
  }
  const std::string state = ShowJobField(r.out, "JobState");
  if (!r.success() || state.empty()) {
    return absl::InternalError(absl::StrCat("scontrol show job ", job_id, " (",
                                            r.DescribeExit(), "): ", r.err, r.out));
  }
  return state;
}

std::string SlurmCluster::LogTail(int lines) const {
  std::string out;
  for (const char* name : {"munged.log", "slurmctld.log", "slurmd.log"}) {
    const std::string tail = TailFile(dir_ + "/" + name, lines);
    if (!tail.empty()) absl::StrAppend(&out, "--- ", name, ":\n", tail, "\n");
  }
  return out;
}

}  // namespace snapback::testing

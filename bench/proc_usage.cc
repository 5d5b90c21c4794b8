#include "bench/proc_usage.h"

#include <dirent.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace snapback::bench {
namespace {

absl::Status ErrnoError(const std::string& what) {
  return absl::Status(absl::ErrnoToStatusCode(errno),
                      absl::StrCat(what, ": ", std::strerror(errno)));
}

double Ticks(uint64_t ticks) {
  return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Closes the netlink socket on every path out of DumpTcpSockets.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// tcp_info of every TCP socket of this network namespace, by socket inode:
// one sock_diag dump per address family (the kernel's interface behind
// `ss -ti`).
absl::StatusOr<std::map<uint64_t, TcpBytes>> DumpTcpSockets() {
  std::map<uint64_t, TcpBytes> out;
  Fd fd{socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)};
  if (fd.fd < 0) return ErrnoError("socket(NETLINK_SOCK_DIAG)");
  for (const int family : {AF_INET, AF_INET6}) {
    struct {
      nlmsghdr header;
      inet_diag_req_v2 request;
    } msg = {};
    msg.header.nlmsg_len = sizeof(msg);
    msg.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.request.sdiag_family = static_cast<uint8_t>(family);
    msg.request.sdiag_protocol = IPPROTO_TCP;
    msg.request.idiag_states = ~0u;
    msg.request.idiag_ext = 1 << (INET_DIAG_INFO - 1);
    if (send(fd.fd, &msg, sizeof(msg), 0) != static_cast<ssize_t>(sizeof(msg))) {
      return ErrnoError("sock_diag request");
    }
    std::vector<char> buf(1 << 16);
    for (bool done = false; !done;) {
      const ssize_t n = recv(fd.fd, buf.data(), buf.size(), 0);
      if (n < 0) return ErrnoError("sock_diag reply");
      int left = static_cast<int>(n);
      for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, left);
           h = NLMSG_NEXT(h, left)) {
        if (h->nlmsg_type == NLMSG_DONE) {
          done = true;
          break;
        }
        if (h->nlmsg_type == NLMSG_ERROR) {
          return absl::UnavailableError("sock_diag dump failed (NLMSG_ERROR)");
        }
        auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
        int attr_left = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
        for (auto* a = reinterpret_cast<rtattr*>(m + 1); RTA_OK(a, attr_left);
             a = RTA_NEXT(a, attr_left)) {
          // Inode 0: a socket no process holds (TIME_WAIT, orphans).
          if (a->rta_type != INET_DIAG_INFO || m->idiag_inode == 0) continue;
          // An older kernel sends a shorter tcp_info: the rest stays zero.
          tcp_info info = {};
          std::memcpy(&info, RTA_DATA(a), std::min<size_t>(RTA_PAYLOAD(a), sizeof(info)));
          out[m->idiag_inode] = {info.tcpi_bytes_acked, info.tcpi_bytes_received};
        }
      }
    }
  }
  return out;
}

// Inodes of the sockets process `pid` has open.
absl::StatusOr<std::set<uint64_t>> SocketInodes(pid_t pid) {
  std::set<uint64_t> out;
  const std::string dir = absl::StrCat("/proc/", pid, "/fd");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return ErrnoError(dir);
  while (dirent* e = readdir(d)) {
    char target[128];
    const std::string path = dir + "/" + e->d_name;
    const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    absl::string_view t(target, n);
    uint64_t inode;
    if (absl::ConsumePrefix(&t, "socket:[") && absl::ConsumeSuffix(&t, "]") &&
        absl::SimpleAtoi(t, &inode)) {
      out.insert(inode);
    }
  }
  closedir(d);
  return out;
}

// utime + stime of `pid`, all threads.
absl::StatusOr<double> CpuSeconds(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  // The command name may hold spaces: fields are counted after its ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 > line.size()) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  // After "pid (comm) ": state is field 3, utime and stime fields 14 and 15.
  std::vector<std::string> f = absl::StrSplit(line.substr(close + 2), ' ');
  uint64_t utime = 0, stime = 0;
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &utime) ||
      !absl::SimpleAtoi(f[12], &stime)) {
    return absl::DataLossError(absl::StrCat("cannot parse ", path));
  }
  return Ticks(utime + stime);
}

}  // namespace

absl::StatusOr<double> MachineBusySeconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq;
  if (!in || cpu != "cpu") return absl::DataLossError("cannot parse /proc/stat");
  return Ticks(user + nice + system + irq + softirq);
}

absl::StatusOr<UsageSample> SampleUsage(const std::vector<pid_t>& pids) {
  UsageSample out;
  SNAPBACK_ASSIGN_OR_RETURN(out.machine_busy_seconds, MachineBusySeconds());
  SNAPBACK_ASSIGN_OR_RETURN(const auto all, DumpTcpSockets());
  for (pid_t pid : pids) {
    ProcessSample& p = out.processes[pid];
    SNAPBACK_ASSIGN_OR_RETURN(p.cpu_seconds, CpuSeconds(pid));
    SNAPBACK_ASSIGN_OR_RETURN(const std::set<uint64_t> inodes, SocketInodes(pid));
    for (uint64_t inode : inodes) {
      auto it = all.find(inode);
      if (it != all.end()) p.sockets[inode] = it->second;
    }
  }
  return out;
}

Usage& Usage::operator+=(const Usage& o) {
  cpu_seconds += o.cpu_seconds;
  sent += o.sent;
  received += o.received;
  closed_sockets += o.closed_sockets;
  return *this;
}

Usage UsageBetween(const UsageSample& before, const UsageSample& after, pid_t pid) {
  Usage u;
  const ProcessSample& a = after.processes.at(pid);
  const ProcessSample& b = before.processes.at(pid);
  u.cpu_seconds = a.cpu_seconds - b.cpu_seconds;
  for (const auto& [inode, bytes] : a.sockets) {
    auto it = b.sockets.find(inode);
    const TcpBytes base = it == b.sockets.end() ? TcpBytes{} : it->second;
    u.sent += bytes.sent - base.sent;
    u.received += bytes.received - base.received;
  }
  for (const auto& [inode, bytes] : b.sockets) {
    if (!a.sockets.contains(inode)) ++u.closed_sockets;
  }
  return u;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  if (!(in >> a >> b >> c)) return "?";
  return absl::StrCat(a, " ", b, " ", c);
}

std::string MachineDescription() {
  std::string model = "?";
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      model = std::string(absl::StripAsciiWhitespace(line.substr(line.find(':') + 1)));
      break;
    }
  }
  utsname u;
  if (uname(&u) != 0) std::strcpy(u.release, "?");
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                        static_cast<double>(sysconf(_SC_PAGE_SIZE)) / (1ull << 30);
  return absl::StrFormat(
      "cores: %d online (%u hardware threads), %s\nmemory: %.1f GiB; kernel %s\n",
      sysconf(_SC_NPROCESSORS_ONLN), std::thread::hardware_concurrency(), model, memory,
      u.release);
}

}  // namespace snapback::bench

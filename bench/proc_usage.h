// What the kernel counts per process, for benchmarks whose servers run as
// separate processes (bench/cluster_bench): CPU time (/proc/<pid>/stat), the
// TCP payload bytes of every socket a process holds (sock_diag's tcp_info,
// matched to processes through /proc/<pid>/fd), and the machine's busy time
// (/proc/stat), so a figure can say how much of the machine others took.
//
// /proc/<pid>/io cannot give network bytes: gRPC moves them with
// sendmsg/recvmsg, which its rchar/wchar do not count.
//
// Linux only; the calls are thread-compatible (no shared state).
#ifndef SNAPBACK_BENCH_PROC_USAGE_H_
#define SNAPBACK_BENCH_PROC_USAGE_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace snapback::bench {

// Payload of one TCP socket since it was opened.
struct TcpBytes {
  uint64_t sent = 0;      // acked by the peer (tcpi_bytes_acked)
  uint64_t received = 0;  // tcpi_bytes_received
};

struct ProcessSample {
  double cpu_seconds = 0;                // utime + stime of every thread
  std::map<uint64_t, TcpBytes> sockets;  // by socket inode
};

// One look at a set of processes and at the machine.
struct UsageSample {
  double machine_busy_seconds = 0;  // see MachineBusySeconds()
  std::map<pid_t, ProcessSample> processes;
};

// Samples `pids` (which must be running): their CPU time and the TCP
// sockets they hold, from one sock_diag dump of this network namespace.
// An error when /proc or sock_diag cannot be read.
absl::StatusOr<UsageSample> SampleUsage(const std::vector<pid_t>& pids);

// What one process used between two samples.
struct Usage {
  double cpu_seconds = 0;
  uint64_t sent = 0;
  uint64_t received = 0;
  // Sockets open at the first sample and gone at the second: what they
  // moved in between is not counted (a socket opened in between counts in
  // full).
  int closed_sockets = 0;
  Usage& operator+=(const Usage& o);
};

// `pid` must be in both samples.
Usage UsageBetween(const UsageSample& before, const UsageSample& after, pid_t pid);

// CPU-seconds the machine's cores have been busy since boot (user, nice,
// system, irq and softirq time of /proc/stat).
absl::StatusOr<double> MachineBusySeconds();

// "0.52 0.40 0.33": the load averages of /proc/loadavg ("?" when unreadable).
std::string LoadAverage();

// Lines describing the machine: cores, CPU model, memory, kernel release.
std::string MachineDescription();

}  // namespace snapback::bench

#endif  // SNAPBACK_BENCH_PROC_USAGE_H_

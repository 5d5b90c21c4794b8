#include "testing/job_harness.h"

#include <signal.h>

#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "snapback/client.h"

namespace snapback::testing {

std::optional<Progress> ReadProgress(const std::string& dir, int rank) {
  // The demo job renames each line into place: never half a line here.
  std::ifstream f(absl::StrCat(dir, "/rank", rank));
  Progress p;
  if (!(f >> p.pid >> p.incarnation >> p.step)) return std::nullopt;
  return p;
}

std::optional<Progress> WaitProgress(const std::string& dir, int rank,
                                     int64_t incarnation, int64_t step,
                                     absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::optional<Progress> p = ReadProgress(dir, rank);
    if (p.has_value() && p->incarnation == incarnation && p->step >= step) return p;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return std::nullopt;
}

Launcher::Launcher(std::vector<std::string> argv) : proc_(std::move(argv)) {
  reader_ = std::thread([this] {
    while (std::optional<std::string> line = proc_.ReadLine(absl::Hours(1))) {
      absl::MutexLock lock(&mu_);
      lines_.push_back(*line);
    }
    absl::MutexLock lock(&mu_);
    eof_ = true;
  });
}

Launcher::~Launcher() {
  proc_.Kill(SIGKILL);
  reader_.join();
}

void Launcher::Signal(int signal) { proc_.Kill(signal); }

int Launcher::Wait(absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&eof_), timeout)) return -1;
  }
  return proc_.Wait(absl::Seconds(10));
}

std::vector<std::string> Launcher::Lines(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const std::string& l : lines_) {
    if (l.rfind(prefix, 0) == 0) out.push_back(l);
  }
  return out;
}

std::string Launcher::Output() {
  absl::MutexLock lock(&mu_);
  return absl::StrJoin(lines_, "\n");
}

absl::Status SaveAsIncarnation(const std::string& endpoint, const std::string& job,
                               int world_size, int64_t incarnation) {
  auto client = Client::Connect({.endpoint = endpoint});
  if (!client.ok()) return client.status();
  auto ck = (*client)->NewCheckpointer({.job_id = job,
                                        .rank = 0,
                                        .world_size = world_size,
                                        .incarnation = incarnation,
                                        .heartbeat_interval = absl::ZeroDuration()});
  if (!ck.ok()) return ck.status();
  std::vector<float> w(16, 1.0f);
  auto h = (*ck)->Save(1000, {TensorView{.name = "layer0.weight",
                                         .dtype = DType::kFloat32,
                                         .shape = {16},
                                         .data = w.data()}});
  absl::Status s = h.ok() ? h->Wait() : h.status();
  (void)(*ck)->Close();
  return s;
}

}  // namespace snapback::testing

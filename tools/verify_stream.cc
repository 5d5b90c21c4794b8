#include "tools/verify_stream.h"

#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace snapback::tools {

VerifyStreamResult StreamVerify(v1::CoordinatorService::Stub* stub,
                                const v1::VerifyCheckpointRequest& req,
                                absl::Duration idle, ProgressBar* bar) {
  VerifyStreamResult out;
  grpc::ClientContext ctx;
  absl::Mutex mu;
  absl::Time last = absl::Now();
  bool over = false;
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu);
    while (!over) {
      mu.AwaitWithDeadline(absl::Condition(&over), last + idle);
      if (!over && absl::Now() >= last + idle) {
        out.silent = true;
        ctx.TryCancel();
        return;
      }
    }
  });
  auto reader = stub->VerifyCheckpoint(&ctx, req);
  v1::VerifyProgress p;
  bool started = false;
  while (reader->Read(&p)) {
    {
      absl::MutexLock lock(&mu);
      last = absl::Now();
    }
    started = true;
    std::string label = absl::StrCat("verify ", req.job_id());
    if (p.current_step() >= 0) absl::StrAppend(&label, "@", p.current_step());
    absl::StrAppend(&label, " (", p.checkpoints_done(), "/", p.checkpoints_total(), ")");
    std::string extra;
    if (p.bad_chunks_found() > 0) absl::StrAppend(&extra, p.bad_chunks_found(), " bad");
    if (p.repaired_chunks() > 0) {
      absl::StrAppend(&extra, extra.empty() ? "" : ", ", p.repaired_chunks(),
                      " repaired");
    }
    bar->Update(p.bytes_verified(), p.bytes_total(), label, extra);
    if (p.final()) out.final = p;
  }
  out.status = reader->Finish();
  {
    absl::MutexLock lock(&mu);
    over = true;
  }
  watchdog.join();
  if (started) bar->Finish();
  return out;
}

}  // namespace snapback::tools

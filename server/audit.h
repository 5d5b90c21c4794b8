// The operator audit log, as the services record it: who (the TLS client
// certificate's subject when there is one, else the peer address), what,
// on which job and step, why, and the outcome, appended after the action
// whether it succeeded or not. A failure to record is logged, not turned
// into a failure of the action (which has happened by then).
#ifndef SNAPBACK_SERVER_AUDIT_H_
#define SNAPBACK_SERVER_AUDIT_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "coordinator/coordinator_store.h"

namespace snapback::server {

inline std::string Caller(const grpc::ServerContextBase* ctx) {
  if (const auto auth = ctx->auth_context(); auth != nullptr) {
    const auto subject = auth->FindPropertyValues("x509_subject");
    if (!subject.empty()) return std::string(subject[0].data(), subject[0].size());
  }
  return ctx->peer();
}

// `outcome`: "ok", or what the action found or failed with.
inline void Audit(coordinator::CoordinatorStore* store, const std::string& who,
                  const std::string& action, const std::string& job, int64_t step,
                  const std::string& reason, std::string outcome) {
  v1::AuditEntry e;
  e.set_unix_ms(absl::ToUnixMillis(absl::Now()));
  e.set_who(who);
  e.set_action(action);
  e.set_job_id(job);
  e.set_step(step);
  e.set_reason(reason);
  e.set_outcome(std::move(outcome));
  absl::Status s = store->AppendAudit(std::move(e));
  if (!s.ok()) {
    SNAPBACK_LOG(Error, "audit log: %s on %s not recorded: %s", action, job,
                 s.ToString());
  }
}

inline void Audit(coordinator::CoordinatorStore* store, const std::string& who,
                  const std::string& action, const std::string& job, int64_t step,
                  const std::string& reason, const absl::Status& outcome) {
  Audit(store, who, action, job, step, reason,
        outcome.ok() ? std::string("ok") : outcome.ToString());
}

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_AUDIT_H_

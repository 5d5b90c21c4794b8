// Status propagation macros. Distro Abseil (20220623) does not ship
// absl/status/status_macros.h, so snapback defines its own.
#ifndef SNAPBACK_COMMON_STATUS_MACROS_H_
#define SNAPBACK_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SNAPBACK_CONCAT_INNER_(a, b) a##b
#define SNAPBACK_CONCAT_(a, b) SNAPBACK_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define SNAPBACK_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status snapback_status_ = (expr);            \
    if (!snapback_status_.ok()) return snapback_status_; \
  } while (0)

// `SNAPBACK_ASSIGN_OR_RETURN(auto x, Foo());` evaluates an absl::StatusOr<T>,
// returns its status when not OK, and otherwise moves the value into `lhs`.
#define SNAPBACK_ASSIGN_OR_RETURN(lhs, expr)                                           \
  SNAPBACK_ASSIGN_OR_RETURN_IMPL_(SNAPBACK_CONCAT_(snapback_statusor_, __LINE__), lhs, \
                                  expr)

#define SNAPBACK_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // SNAPBACK_COMMON_STATUS_MACROS_H_

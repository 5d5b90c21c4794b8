// How the client library fills in and checks its options: the environment
// variables snapback-launch (or the user) sets stand in for fields left at
// their "unset" values, then the result is validated. Pure functions of the
// options and the environment, no RPC, so they are unit-tested alone
// (client/options_test.cc).
//
// Internal to the client library.
#ifndef SNAPBACK_CLIENT_OPTIONS_H_
#define SNAPBACK_CLIENT_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "snapback/client.h"

namespace snapback::internal_client {

// The value of environment variable `name`, or `fallback` when it is unset
// or empty.
std::string EnvOr(const char* name, const std::string& fallback);

// Parses environment variable `name` into *out; leaves *out as it is when
// the variable is unset or empty. INVALID_ARGUMENT (naming the variable and
// its value) when it is not an integer; *out is then unspecified.
absl::Status EnvInt(const char* name, int64_t* out);

// Fills the fields of `options` left empty: endpoint from SNAPBACK_ENDPOINT
// (else "127.0.0.1:7420"), tls_root_ca_file from SNAPBACK_TLS_CA (else
// plaintext). Never fails: a bad CA file shows when the channel is made.
void ResolveClientOptions(ClientOptions* options);

// Fills the fields of `options` left at their "unset" values from
// SNAPBACK_JOB, SNAPBACK_RANK (else 0), SNAPBACK_WORLD_SIZE (else 1),
// SNAPBACK_INCARNATION (else -1: the coordinator's, decided when the job is
// registered) and SNAPBACK_HEARTBEAT_MS (else 1000; negative = 0, off), then
// checks them. INVALID_ARGUMENT, saying what to set, for no job id, a
// non-integer variable, a rank outside [0, world_size), chunk_bytes outside
// [4 KiB, 16 MiB], or a thread / stream / inflight count below 1. *options
// may be partly filled in on failure.
absl::Status ResolveCheckpointerOptions(CheckpointerOptions* options);

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_OPTIONS_H_

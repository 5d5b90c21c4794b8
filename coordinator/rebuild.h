// Rebuilding a lost coordinator's catalogue from the storage nodes
// (`snapback-server --role coordinator --rebuild-from-tier HOST:PORT,...`).
//
// Every committed checkpoint's CatalogRecord (job, checkpoint, manifests)
// is kept on R storage nodes (ClusterTier::PublishCatalog). Rebuild reads
// the records from the listed nodes, lists the chunks those nodes hold, and
// imports each checkpoint whose every chunk is on at least one node (a
// record left behind by a checkpoint deleted since is skipped that way).
// Chunk locations come afterwards: the nodes register with the new
// coordinator and are reconciled against the imported references.
#ifndef SNAPBACK_COORDINATOR_REBUILD_H_
#define SNAPBACK_COORDINATOR_REBUILD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_store.h"
#include "rpc/storage_client.h"

namespace snapback::coordinator {

struct RebuildReport {
  int nodes_read = 0;
  int records = 0;               // distinct checkpoint records found
  int imported = 0;              // checkpoints imported
  int skipped_missing = 0;       // records naming chunks no node holds
  int jobs = 0;                  // jobs in the rebuilt catalogue
  uint64_t chunks_on_nodes = 0;  // distinct chunks the nodes hold
};

// Fails with UNAVAILABLE when fewer than half of `nodes` can be read (the
// catalogue would likely be incomplete: bring the nodes up and retry), and
// FAILED_PRECONDITION when `store` already holds jobs.
absl::StatusOr<RebuildReport> RebuildFromTier(
    CoordinatorStore* store, const std::vector<std::string>& nodes,
    const internal_client::StorageClientOptions& options);

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_REBUILD_H_

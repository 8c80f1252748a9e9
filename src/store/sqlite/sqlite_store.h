// The embedded SQLite backend of Store: one database file, WAL, synchronous=FULL.
// One writer at a time uses the write connection: the committing thread at the front of the
// queue leads a group commit for everyone queued behind it (docs/threading.md). Readers use
// a small pool of read-only connections. See store/store.h for the contract.
#pragma once

#include <memory>
#include <string>

#include "store/store.h"

namespace agentd::store::sqlite {

struct SqliteOptions {
  std::string path;                 // database file; created when missing
  bool synchronous_full = true;     // synchronous=FULL (NORMAL only for experiments)
  int max_batches_per_commit = 4096;  // cap on batches gathered into one transaction
  // Chains audit entries (store.h AuditRow); a batch with audit entries fails without it.
  AuditChainFn audit_chain = nullptr;
  // Opens only read connections: CommitBlocking fails, the schema is neither created nor
  // migrated (for reading a copy of a data directory).
  bool read_only = false;
};

Result<std::unique_ptr<Store>> OpenSqliteStore(const SqliteOptions& options);

}  // namespace agentd::store::sqlite

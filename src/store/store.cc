#include "store/store.h"

#include <future>

namespace agentd::store {

Status Store::CommitBlocking(WriteBatch batch) {
  std::promise<Status> p;
  auto f = p.get_future();
  Commit(std::move(batch), [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

}  // namespace agentd::store

// The stop signals of a program that serves until told to stop (agentd, the test fakes).
//
// Constructed in main before any thread starts: SIGTERM and SIGINT are blocked, so every
// thread inherits the mask and WaitBlocking (sigwait) is the only place they are delivered;
// SIGPIPE is ignored, so a peer that goes away is an EPIPE, not the end of the process.
#pragma once

#include <pthread.h>
#include <signal.h>

namespace agentd {

class StopSignals {
 public:
  StopSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    signal(SIGPIPE, SIG_IGN);
  }

  // Returns the signal that arrived.
  int WaitBlocking() const {
    int sig = 0;
    sigwait(&set_, &sig);
    return sig;
  }

 private:
  sigset_t set_;
};

}  // namespace agentd

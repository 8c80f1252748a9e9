#include "sandbox/supervisor_protocol.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

namespace agentd::sandbox {

bool SendMessage(int sock, const std::string& text, const std::vector<int>& fds) {
  if (text.size() > kMaxSupervisorMessage || fds.size() > kMaxPassedFds) {
    errno = EMSGSIZE;
    return false;
  }
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n >= 0) return true;
    if (errno != EINTR) return false;
  }
}

bool ReceiveMessage(int sock, std::string* text, std::vector<int>* fds) {
  text->resize(kMaxSupervisorMessage + 1);
  iovec iov{text->data(), text->size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  fds->clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(fd);
    }
  }
  if (n < 0) return false;
  if (n == 0) {
    errno = 0;
    return false;
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<size_t>(n) > kMaxSupervisorMessage) {
    for (int fd : *fds) close(fd);
    fds->clear();
    errno = EMSGSIZE;
    return false;
  }
  text->resize(static_cast<size_t>(n));
  return true;
}

void AppendFrame(std::string* out, uint32_t kind, int64_t id, const char* data, size_t size) {
  char h[kFrameHeader];
  uint32_t len = static_cast<uint32_t>(size);
  uint64_t uid = static_cast<uint64_t>(id);
  for (int i = 0; i < 4; ++i) h[i] = static_cast<char>(len >> (8 * i));
  for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<char>(kind >> (8 * i));
  for (int i = 0; i < 8; ++i) h[8 + i] = static_cast<char>(uid >> (8 * i));
  out->append(h, kFrameHeader);
  out->append(data, size);
}

int TakeFrame(std::string* in, Frame* frame) {
  if (in->size() < kFrameHeader) return 0;
  const auto* h = reinterpret_cast<const unsigned char*>(in->data());
  uint32_t len = 0, kind = 0;
  uint64_t id = 0;
  for (int i = 0; i < 4; ++i) len |= static_cast<uint32_t>(h[i]) << (8 * i);
  for (int i = 0; i < 4; ++i) kind |= static_cast<uint32_t>(h[4 + i]) << (8 * i);
  for (int i = 0; i < 8; ++i) id |= static_cast<uint64_t>(h[8 + i]) << (8 * i);
  if (len > kMaxFramePayload) return -1;
  if (in->size() < kFrameHeader + len) return 0;
  frame->kind = kind;
  frame->id = static_cast<int64_t>(id);
  frame->payload.assign(in->data() + kFrameHeader, len);
  in->erase(0, kFrameHeader + len);
  return 1;
}

std::string EncodeU64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

uint64_t DecodeU64(const std::string& p) {
  if (p.size() < 8) return 0;
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace agentd::sandbox

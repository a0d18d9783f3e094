// Plain system calls for the NBD side: socketpair, close, setsockopt, raw netlink sockets and a
// gathered non-blocking send for NBD replies; and getsockopt(SO_PEERCRED) for the daemon's control
// socket; flock(2) for the daemon's instance lock.
// Generic netlink messages are built and parsed in TypeScript (src/nbd/netlink.ts).
#include "common.h"

#include <linux/netlink.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <climits>
#include <unistd.h>

#include <cstring>

namespace srpnbd {
namespace {

// socketpair() -> [fd, fd]: AF_UNIX SOCK_STREAM, close-on-exec, blocking (Node and the
// kernel NBD driver each set what they need).
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) ThrowErrno(env, errno, "socketpair");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgI32(info, 0, "fd");
  if (close(fd) < 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// setsockoptInt(fd, level, name, value)
Napi::Value SetSockOptInt(const Napi::CallbackInfo& info) {
  int fd = ArgI32(info, 0, "fd"), level = ArgI32(info, 1, "level"), name = ArgI32(info, 2, "name");
  int v = ArgI32(info, 3, "value");
  if (setsockopt(fd, level, name, &v, sizeof v) < 0) ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

// getPeerCred(fd) -> {pid, uid, gid} of the process that connected a unix socket (SO_PEERCRED:
// the credentials at connect() time, kept by the kernel for the connection's life).
Napi::Value GetPeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(env, errno, "getsockopt(SO_PEERCRED)");
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

// netlinkOpen(protocol) -> fd: non-blocking, close-on-exec, bound (kernel-assigned port id).
Napi::Value NetlinkOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int proto = ArgI32(info, 0, "protocol");
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
  if (fd < 0) ThrowErrno(env, errno, "socket(AF_NETLINK)");
  sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "bind(AF_NETLINK)");
  }
  return Napi::Number::New(env, fd);
}

// netlinkSend(fd, message): sends one datagram to the kernel; returns bytes sent.
Napi::Value NetlinkSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  auto buf = ArgBuffer(info, 1, "message");
  sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  ssize_t n;
  do {
    n = sendto(fd, buf.Data(), buf.Length(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, errno, "sendto(AF_NETLINK)");
  return Napi::Number::New(env, static_cast<double>(n));
}

// netlinkSendAsync(fd, message) -> Promise<bytes sent>: netlinkSend on a libuv worker thread.
// A generic netlink request runs its kernel handler inside sendmsg, in the caller's thread; some
// NBD handlers wait for the NBD socket (NBD_CMD_DISCONNECT sends NBD_CMD_DISC to the server on
// it), and the server may be this process's own event loop. From a worker, the loop keeps
// serving while the kernel works. The message is referenced until the call returns.
class NetlinkSendWorker : public Napi::AsyncWorker {
 public:
  NetlinkSendWorker(Napi::Env env, int fd, Napi::Buffer<uint8_t> msg)
      : Napi::AsyncWorker(env, "srp-nbd:netlinkSend"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd),
        data_(msg.Data()), len_(msg.Length()), msg_(Napi::Persistent(msg)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    do {
      sent_ = sendto(fd_, data_, len_, 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    } while (sent_ < 0 && errno == EINTR);
    err_ = sent_ < 0 ? errno : 0;
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) deferred_.Reject(ErrnoError(env, err_, "sendto(AF_NETLINK)").Value());
    else deferred_.Resolve(Napi::Number::New(env, static_cast<double>(sent_)));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  const uint8_t* data_;
  size_t len_;
  Napi::Reference<Napi::Buffer<uint8_t>> msg_;
  ssize_t sent_ = 0;
  int err_ = 0;
};

Napi::Value NetlinkSendAsync(const Napi::CallbackInfo& info) {
  int fd = ArgI32(info, 0, "fd");
  auto buf = ArgBuffer(info, 1, "message");
  auto* w = new NetlinkSendWorker(info.Env(), fd, buf);
  Napi::Promise p = w->Promise();
  w->Queue();  // deletes itself after OnOK/OnError
  return p;
}

// netlinkRecv(fd, buffer) -> length of the datagram (may exceed buffer.length: truncated), or
// -1 when nothing is queued (EAGAIN). Never blocks.
Napi::Value NetlinkRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  auto buf = ArgBuffer(info, 1, "buffer");
  ssize_t n;
  do {
    n = recv(fd, buf.Data(), buf.Length(), MSG_DONTWAIT | MSG_TRUNC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "recv(AF_NETLINK)");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// sendv(fd, buffers, start, count) -> bytes sent, or -1 when the socket buffer is full (EAGAIN).
// One sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL) of buffers[start, start+count) (at most IOV_MAX of
// them); a short count is the caller's to finish. Never blocks; a dead peer is an EPIPE error,
// not a signal.
Napi::Value SendV(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  if (!info[1].IsArray()) ThrowType(env, "buffers must be an array");
  Napi::Array bufs = info[1].As<Napi::Array>();
  uint32_t start = ArgU32(info, 2, "start");
  uint32_t count = ArgU32(info, 3, "count");
  if (start > bufs.Length() || count > bufs.Length() - start) ThrowType(env, "start/count beyond the array");
  if (count > IOV_MAX) count = IOV_MAX;
  iovec iov[IOV_MAX];
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value v = bufs[start + i];
    if (!v.IsBuffer()) ThrowType(env, "buffers must hold Buffers");
    auto b = v.As<Napi::Buffer<uint8_t>>();
    iov[i].iov_base = b.Data();
    iov[i].iov_len = b.Length();
  }
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = count;
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// flockExclusive(fd) -> true when this open file now holds an exclusive flock(2), false when
// another open file holds one (EWOULDBLOCK). Never blocks. The lock goes with the last close of
// the file (or the process's death), so it cannot go stale.
Napi::Value FlockExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  int r;
  do {
    r = flock(fd, LOCK_EX | LOCK_NB);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    ThrowErrno(env, errno, "flock");
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetSockOptInt, "setsockoptInt"));
  exports.Set("getPeerCred", Napi::Function::New(env, GetPeerCred, "getPeerCred"));
  exports.Set("netlinkOpen", Napi::Function::New(env, NetlinkOpen, "netlinkOpen"));
  exports.Set("netlinkSend", Napi::Function::New(env, NetlinkSend, "netlinkSend"));
  exports.Set("netlinkSendAsync", Napi::Function::New(env, NetlinkSendAsync, "netlinkSendAsync"));
  exports.Set("netlinkRecv", Napi::Function::New(env, NetlinkRecv, "netlinkRecv"));
  exports.Set("sendv", Napi::Function::New(env, SendV, "sendv"));
  exports.Set("flockExclusive", Napi::Function::New(env, FlockExclusive, "flockExclusive"));
}

}  // namespace srpnbd

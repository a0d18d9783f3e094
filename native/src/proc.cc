// System calls about the daemon process itself: prctl (PR_SET_IO_FLUSHER), mlock/mlockall, and
// one datagram to a unix socket (systemd's sd_notify protocol: the message to $NOTIFY_SOCKET).
// What to lock, when to notify and what to say is decided in TypeScript (src/daemon/memory.ts,
// src/daemon/systemd.ts).
#include "common.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace srpnbd {
namespace {

// prctlSet(option, value) -> prctl's result: prctl(option, value, 0, 0, 0).
Napi::Value PrctlSet(const Napi::CallbackInfo& info) {
  int option = ArgI32(info, 0, "option");
  uint64_t value = ArgU64(info, 1, "value");
  int r = prctl(option, static_cast<unsigned long>(value), 0UL, 0UL, 0UL);
  if (r < 0) ThrowErrno(info.Env(), errno, "prctl");
  return Napi::Number::New(info.Env(), r);
}

// mlockall(flags): MCL_CURRENT 1, MCL_FUTURE 2, MCL_ONFAULT 4.
Napi::Value MlockAll(const Napi::CallbackInfo& info) {
  if (mlockall(ArgI32(info, 0, "flags")) < 0) ThrowErrno(info.Env(), errno, "mlockall");
  return info.Env().Undefined();
}

Napi::Value MunlockAll(const Napi::CallbackInfo& info) {
  if (munlockall() < 0) ThrowErrno(info.Env(), errno, "munlockall");
  return info.Env().Undefined();
}

// mlock(address, length): address and length as bigint (or number).
Napi::Value Mlock(const Napi::CallbackInfo& info) {
  uint64_t addr = ArgU64(info, 0, "address");
  uint64_t len = ArgU64(info, 1, "length");
  if (mlock(reinterpret_cast<const void*>(static_cast<uintptr_t>(addr)), static_cast<size_t>(len)) < 0)
    ThrowErrno(info.Env(), errno, "mlock");
  return info.Env().Undefined();
}

// unixDgramSend(path, message) -> bytes sent: one datagram on a fresh AF_UNIX SOCK_DGRAM socket.
// A path starting with '@' is in the abstract namespace (as $NOTIFY_SOCKET may be).
Napi::Value UnixDgramSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) ThrowType(env, "path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  auto msg = ArgBuffer(info, 1, "message");
  sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) ThrowType(env, "path is empty or too long");
  memcpy(sa.sun_path, path.data(), path.size());
  if (path[0] == '@') sa.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket(AF_UNIX)");
  ssize_t n;
  do {
    n = sendto(fd, msg.Data(), msg.Length(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&sa), len);
  } while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  if (n < 0) ThrowErrno(env, e, "sendto(AF_UNIX)");
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitProc(Napi::Env env, Napi::Object exports) {
  exports.Set("prctlSet", Napi::Function::New(env, PrctlSet, "prctlSet"));
  exports.Set("mlockall", Napi::Function::New(env, MlockAll, "mlockall"));
  exports.Set("munlockall", Napi::Function::New(env, MunlockAll, "munlockall"));
  exports.Set("mlock", Napi::Function::New(env, Mlock, "mlock"));
  exports.Set("unixDgramSend", Napi::Function::New(env, UnixDgramSend, "unixDgramSend"));
}

}  // namespace srpnbd

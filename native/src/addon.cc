// Module entry, error helpers and the fd poller (uv_poll).
//
// The poller is the only place where the addon calls back into JS: it reports that an fd is
// readable; JS then calls the matching non-blocking function (rdma_get_cm_event,
// ibv_get_cq_event + ibv_poll_cq, ibv_get_async_event, recv on a netlink socket) until it
// reports "nothing more" (EAGAIN). A poll that fails is stopped and reported to the same
// callback as an Error. Nothing here ever blocks the event loop.
#include "common.h"

#include <fcntl.h>
#include <uv.h>

#include <cstring>
#include <unordered_map>

namespace srpnbd {

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* code = uv_err_name(-err);
  std::string msg = std::string(syscall) + " failed: " + strerror(err) + " (" + code + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, code));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall) { throw ErrnoError(env, err, syscall); }

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) ThrowType(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Uint32Value();
}
int32_t ArgI32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) ThrowType(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info[i].IsBigInt()) {
    bool lossless = true;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) ThrowType(info.Env(), std::string(name) + " does not fit in 64 bits");
    return v;
  }
  if (info[i].IsNumber()) return static_cast<uint64_t>(info[i].As<Napi::Number>().Int64Value());
  ThrowType(info.Env(), std::string(name) + " must be a bigint or a number");
}
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsBuffer()) ThrowType(info.Env(), std::string(name) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}
bool ArgBool(const Napi::CallbackInfo& info, size_t i, bool dflt) {
  if (info.Length() <= i || info[i].IsUndefined()) return dflt;
  return info[i].ToBoolean().Value();
}
int SetNonBlocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -1;
  return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ----------------------------------------------------------------- poller */

namespace {

struct Poller {
  uv_poll_t handle;
  Napi::Env env;
  Napi::FunctionReference cb;
  uint32_t id;
  Poller(Napi::Env e) : env(e) {}
};

std::unordered_map<uint32_t, Poller*> pollers;
uint32_t nextPollerId = 1;

void OnPollClosed(uv_handle_t* h) { delete static_cast<Poller*>(h->data); }

// cb(null, events) when the fd is ready. A failed poll (status < 0: libuv reports POLLERR on the fd
// as UV_EBADF) is stopped and reported once, as cb(error, 0) with errno, code (e.g. "EBADF") and
// syscall "uv_poll"; the poller stays allocated until pollStop().
void OnPoll(uv_poll_t* h, int status, int events) {
  Poller* p = static_cast<Poller*>(h->data);
  Napi::Env env = p->env;
  Napi::HandleScope scope(env);
  Napi::Value err = env.Null();
  if (status < 0) {
    uv_poll_stop(&p->handle);
    err = ErrnoError(env, -status, "uv_poll").Value();
    events = 0;
  }
  try {
    p->cb.MakeCallback(env.Global(), {err, Napi::Number::New(env, events)});
  } catch (const Napi::Error& e) {
    // An exception thrown by the JS callback: hand it to process 'uncaughtException'.
    napi_fatal_exception(env, e.Value());
  }
}

void ClosePoller(Poller* p) {
  pollers.erase(p->id);
  uv_poll_stop(&p->handle);
  p->cb.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), OnPollClosed);
}

// pollStart(fd, events, cb(err, events)) -> poller id. events: UV_READABLE and/or UV_WRITABLE.
Napi::Value PollStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgI32(info, 0, "fd");
  int events = ArgI32(info, 1, "events");
  if (!info[2].IsFunction()) ThrowType(env, "callback must be a function");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowType(env, "no event loop");
  auto* p = new Poller(env);
  p->handle.data = p;
  int rc = uv_poll_init(loop, &p->handle, fd);
  if (rc < 0) {
    delete p;
    ThrowErrno(env, -rc, "uv_poll_init");
  }
  rc = uv_poll_start(&p->handle, events, OnPoll);
  if (rc < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), OnPollClosed);
    ThrowErrno(env, -rc, "uv_poll_start");
  }
  p->cb = Napi::Persistent(info[2].As<Napi::Function>());
  p->id = nextPollerId++;
  pollers[p->id] = p;
  return Napi::Number::New(env, p->id);
}

// pollStop(id): stops and releases the poller (the fd itself is not closed). Idempotent.
Napi::Value PollStop(const Napi::CallbackInfo& info) {
  auto it = pollers.find(ArgU32(info, 0, "poller"));
  if (it != pollers.end()) ClosePoller(it->second);
  return info.Env().Undefined();
}

// pollRef(id, ref): whether the poller keeps the event loop alive (default yes).
Napi::Value PollRef(const Napi::CallbackInfo& info) {
  auto it = pollers.find(ArgU32(info, 0, "poller"));
  if (it != pollers.end()) {
    auto* h = reinterpret_cast<uv_handle_t*>(&it->second->handle);
    if (ArgBool(info, 1, true)) uv_ref(h);
    else uv_unref(h);
  }
  return info.Env().Undefined();
}

Napi::Value PollCount(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), pollers.size()); }

void Cleanup(void*) {
  while (!pollers.empty()) ClosePoller(pollers.begin()->second);
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("pollStart", Napi::Function::New(env, PollStart, "pollStart"));
  exports.Set("pollStop", Napi::Function::New(env, PollStop, "pollStop"));
  exports.Set("pollRef", Napi::Function::New(env, PollRef, "pollRef"));
  exports.Set("pollCount", Napi::Function::New(env, PollCount, "pollCount"));
  InitSys(env, exports);
  InitProc(env, exports);
  InitRdma(env, exports);
  napi_add_env_cleanup_hook(env, Cleanup, nullptr);
  return exports;
}

}  // namespace srpnbd

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return srpnbd::Init(env, exports); }

NODE_API_MODULE(srp_nbd_native, InitModule)

// librdmacm and libibverbs calls. Objects live in a handle table (small integers in JS), so a
// stale or wrong handle is an EBADF error instead of a crash, and everything still open is
// released in dependency order when the Node environment shuts down.
//
// Non-blocking everywhere: the CM event channel, completion channels and device async fds are
// switched to O_NONBLOCK and watched by pollers (addon.cc); the "get" calls return null when
// nothing is queued. Events are acknowledged here right after their fields are copied out.
#include "common.h"

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <arpa/inet.h>
#include <net/if.h>

#include <condition_variable>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <vector>

namespace srpnbd {
namespace {

enum class Kind { Channel, Id, Ctx, Pd, CompChannel, Cq, Mr };
const char* KindName(Kind k) {
  switch (k) {
    case Kind::Channel: return "event channel";
    case Kind::Id: return "cm id";
    case Kind::Ctx: return "device context";
    case Kind::Pd: return "protection domain";
    case Kind::CompChannel: return "completion channel";
    case Kind::Cq: return "completion queue";
    case Kind::Mr: return "memory region";
  }
  return "?";
}

struct Obj {
  Kind kind;
  void* ptr;
  Napi::Reference<Napi::Buffer<uint8_t>> buf;  // MR: keeps the registered memory alive
  bool busy = false;                           // a worker thread destroys its QP (QpDestroyWorker)
};

std::map<uint32_t, Obj> objs;
std::map<ibv_context*, uint32_t> ctxHandles;
uint32_t nextHandle = 1;

uint32_t Put(Kind k, void* p) {
  uint32_t h = nextHandle++;
  objs[h] = Obj{k, p, {}, false};
  return h;
}

template <typename T>
T* Get(const Napi::CallbackInfo& info, size_t i, Kind k) {
  uint32_t h = ArgU32(info, i, KindName(k));
  auto it = objs.find(h);
  if (it == objs.end() || it->second.kind != k) {
    Napi::Error e = Napi::Error::New(info.Env(), std::string("stale or wrong ") + KindName(k) + " handle " + std::to_string(h));
    e.Set("code", Napi::String::New(info.Env(), "EBADF"));
    throw e;
  }
  if (it->second.busy) {
    Napi::Error e = Napi::Error::New(info.Env(), std::string(KindName(k)) + " handle " + std::to_string(h) +
                                                     " is busy: a worker thread is destroying its QP");
    e.Set("code", Napi::String::New(info.Env(), "EBUSY"));
    throw e;
  }
  return static_cast<T*>(it->second.ptr);
}

// QP destroys running on worker threads (QpDestroyWorker); Cleanup waits for them.
std::mutex inflightMu;
std::condition_variable inflightCv;
int inflight = 0;

uint32_t CtxHandle(ibv_context* c) {
  if (!c) return 0;
  auto it = ctxHandles.find(c);
  if (it != ctxHandles.end()) return it->second;
  uint32_t h = Put(Kind::Ctx, c);
  ctxHandles[c] = h;
  // async events are read with getAsyncEvent() when the poller says so
  SetNonBlocking(c->async_fd);
  return h;
}

Napi::Number Num(Napi::Env env, double v) { return Napi::Number::New(env, v); }

/* ------------------------------------------------------------- devices */

Napi::Value GetDeviceList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) ThrowErrno(env, errno ? errno : ENOSYS, "ibv_get_device_list");
  Napi::Array a = Napi::Array::New(env, n);
  for (int i = 0; i < n; i++) a.Set(i, Napi::String::New(env, ibv_get_device_name(list[i])));
  ibv_free_device_list(list);
  return a;
}

Napi::Value CtxQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  ibv_device_attr a;
  int rc = ibv_query_device(c, &a);
  if (rc) ThrowErrno(env, rc, "ibv_query_device");
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", ibv_get_device_name(c->device));
  o.Set("maxQpWr", Num(env, a.max_qp_wr));
  o.Set("maxSge", Num(env, a.max_sge));
  o.Set("maxCqe", Num(env, a.max_cqe));
  o.Set("maxMrSize", Napi::BigInt::New(env, static_cast<uint64_t>(a.max_mr_size)));
  o.Set("maxQpRdAtom", Num(env, a.max_qp_rd_atom));
  o.Set("maxQpInitRdAtom", Num(env, a.max_qp_init_rd_atom));
  o.Set("physPortCnt", Num(env, a.phys_port_cnt));
  o.Set("nodeGuid", Napi::BigInt::New(env, static_cast<uint64_t>(be64toh(a.node_guid))));
  o.Set("asyncFd", Num(env, c->async_fd));
  return o;
}

Napi::Value PortQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  uint32_t port = ArgU32(info, 1, "port");
  ibv_port_attr a;
  int rc = ibv_query_port(c, static_cast<uint8_t>(port), &a);
  if (rc) ThrowErrno(env, rc, "ibv_query_port");
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Num(env, a.state));
  o.Set("activeMtu", Num(env, a.active_mtu));
  o.Set("lid", Num(env, a.lid));
  o.Set("linkLayer", Num(env, a.link_layer));
  o.Set("pkeyTblLen", Num(env, a.pkey_tbl_len));
  return o;
}

// portGid(ctx, port, index) -> Buffer(16): ibv_query_gid. GID index 0 of a port is its default GID,
// whose interface id (bytes 8..15) is the port GUID ib_srp puts into the initiator port id.
Napi::Value PortGid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  uint32_t port = ArgU32(info, 1, "port");
  uint32_t index = ArgU32(info, 2, "index");
  ibv_gid gid;
  int rc = ibv_query_gid(c, static_cast<uint8_t>(port), static_cast<int>(index), &gid);
  if (rc) ThrowErrno(env, rc > 0 ? rc : (errno ? errno : EINVAL), "ibv_query_gid");
  return Napi::Buffer<uint8_t>::Copy(env, gid.raw, sizeof(gid.raw));
}

// getAsyncEvent(ctx) -> null | { type, portNum, qpNum }
Napi::Value GetAsyncEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  ibv_async_event ev;
  if (ibv_get_async_event(c, &ev) < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "ibv_get_async_event");
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Num(env, ev.event_type));
  o.Set("portNum", Num(env, 0));
  o.Set("qpNum", Num(env, 0));
  switch (ev.event_type) {
    case IBV_EVENT_PORT_ACTIVE: case IBV_EVENT_PORT_ERR: case IBV_EVENT_LID_CHANGE: case IBV_EVENT_PKEY_CHANGE:
    case IBV_EVENT_SM_CHANGE: case IBV_EVENT_CLIENT_REREGISTER: case IBV_EVENT_GID_CHANGE:
      o.Set("portNum", Num(env, ev.element.port_num));
      break;
    case IBV_EVENT_QP_FATAL: case IBV_EVENT_QP_REQ_ERR: case IBV_EVENT_QP_ACCESS_ERR: case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED: case IBV_EVENT_PATH_MIG: case IBV_EVENT_PATH_MIG_ERR: case IBV_EVENT_QP_LAST_WQE_REACHED:
      o.Set("qpNum", Num(env, ev.element.qp->qp_num));
      break;
    default:
      break;
  }
  ibv_ack_async_event(&ev);
  return o;
}

/* ------------------------------------------------------------- rdma_cm */

Napi::Value CmCreateChannel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rdma_event_channel* ch = rdma_create_event_channel();
  if (!ch) ThrowErrno(env, errno ? errno : ENODEV, "rdma_create_event_channel");
  if (SetNonBlocking(ch->fd) < 0) {
    int e = errno;
    rdma_destroy_event_channel(ch);
    ThrowErrno(env, e, "fcntl(O_NONBLOCK)");
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("channel", Num(env, Put(Kind::Channel, ch)));
  o.Set("fd", Num(env, ch->fd));
  return o;
}

Napi::Value CmDestroyChannel(const Napi::CallbackInfo& info) {
  auto* ch = Get<rdma_event_channel>(info, 0, Kind::Channel);
  objs.erase(ArgU32(info, 0, "channel"));
  rdma_destroy_event_channel(ch);
  return info.Env().Undefined();
}

// cmCreateId(channel, portSpace) -> id
Napi::Value CmCreateId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* ch = Get<rdma_event_channel>(info, 0, Kind::Channel);
  auto ps = static_cast<rdma_port_space>(ArgU32(info, 1, "portSpace"));
  uint32_t h = nextHandle;  // the handle this id will get, stored as its context
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(ch, &id, reinterpret_cast<void*>(static_cast<uintptr_t>(h)), ps) < 0)
    ThrowErrno(env, errno, "rdma_create_id");
  return Num(env, Put(Kind::Id, id));
}

Napi::Value CmDestroyId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (id->qp) rdma_destroy_qp(id);
  if (rdma_destroy_id(id) < 0) ThrowErrno(env, errno, "rdma_destroy_id");
  objs.erase(ArgU32(info, 0, "id"));
  return env.Undefined();
}

// cmResolveAddr(id, src: Buffer|null, dst: Buffer, timeoutMs); addresses are raw sockaddr bytes.
Napi::Value CmResolveAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  sockaddr* src = nullptr;
  if (info[1].IsBuffer()) src = reinterpret_cast<sockaddr*>(info[1].As<Napi::Buffer<uint8_t>>().Data());
  auto dst = ArgBuffer(info, 2, "dst");
  if (dst.Length() < sizeof(sa_family_t)) ThrowType(env, "dst is not a sockaddr");
  int timeout = ArgI32(info, 3, "timeoutMs");
  if (rdma_resolve_addr(id, src, reinterpret_cast<sockaddr*>(dst.Data()), timeout) < 0)
    ThrowErrno(env, errno, "rdma_resolve_addr");
  return env.Undefined();
}

Napi::Value CmResolveRoute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (rdma_resolve_route(id, ArgI32(info, 1, "timeoutMs")) < 0) ThrowErrno(env, errno, "rdma_resolve_route");
  return env.Undefined();
}

// cmSetOption(id, level, name, value: Buffer)
Napi::Value CmSetOption(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  auto v = ArgBuffer(info, 3, "value");
  if (rdma_set_option(id, ArgI32(info, 1, "level"), ArgI32(info, 2, "name"), v.Data(), v.Length()) < 0)
    ThrowErrno(env, errno, "rdma_set_option");
  return env.Undefined();
}

// cmGetEvent(channel) -> null | { event, id, status, privateData }
Napi::Value CmGetEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* ch = Get<rdma_event_channel>(info, 0, Kind::Channel);
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "rdma_get_cm_event");
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("event", Num(env, ev->event));
  o.Set("id", Num(env, static_cast<double>(reinterpret_cast<uintptr_t>(ev->id ? ev->id->context : nullptr))));
  o.Set("status", Num(env, ev->status));
  const void* pd = nullptr;
  uint8_t pdLen = 0;
  if (ev->id && ev->id->ps == RDMA_PS_UDP) {
    pd = ev->param.ud.private_data;
    pdLen = ev->param.ud.private_data_len;
  } else {
    pd = ev->param.conn.private_data;
    pdLen = ev->param.conn.private_data_len;
  }
  if (pd && pdLen) o.Set("privateData", Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(pd), pdLen));
  else o.Set("privateData", env.Null());
  rdma_ack_cm_event(ev);
  return o;
}

// cmConnect(id, { privateData, responderResources, initiatorDepth, retryCount, rnrRetryCount })
Napi::Value CmConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (!info[1].IsObject()) ThrowType(env, "connect parameters must be an object");
  Napi::Object p = info[1].As<Napi::Object>();
  rdma_conn_param cp;
  memset(&cp, 0, sizeof cp);
  Napi::Value pdv = p.Get("privateData");
  if (pdv.IsBuffer()) {
    auto b = pdv.As<Napi::Buffer<uint8_t>>();
    if (b.Length() > 255) ThrowType(env, "private data longer than 255 bytes");
    cp.private_data = b.Data();
    cp.private_data_len = static_cast<uint8_t>(b.Length());
  }
  auto u8 = [&](const char* k, uint8_t d) -> uint8_t {
    Napi::Value v = p.Get(k);
    return v.IsNumber() ? static_cast<uint8_t>(v.As<Napi::Number>().Uint32Value()) : d;
  };
  cp.responder_resources = u8("responderResources", 0);
  cp.initiator_depth = u8("initiatorDepth", 0);
  cp.retry_count = u8("retryCount", 6) & 7;
  cp.rnr_retry_count = u8("rnrRetryCount", 7) & 7;
  cp.flow_control = 1;
  if (rdma_connect(id, &cp) < 0) ThrowErrno(env, errno, "rdma_connect");
  return env.Undefined();
}

Napi::Value CmDisconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (rdma_disconnect(id) < 0) ThrowErrno(env, errno, "rdma_disconnect");
  return env.Undefined();
}

// cmIdInfo(id) -> { context, device, port, qpNum, srcAddr }
Napi::Value CmIdInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  Napi::Object o = Napi::Object::New(env);
  o.Set("context", Num(env, CtxHandle(id->verbs)));
  o.Set("device", id->verbs ? Napi::Value(Napi::String::New(env, ibv_get_device_name(id->verbs->device))) : env.Null());
  o.Set("port", Num(env, id->port_num));
  o.Set("qpNum", Num(env, id->qp ? id->qp->qp_num : 0));
  // the local IP address the id is bound to (after address resolution), without the port
  const sockaddr* sa = rdma_get_local_addr(id);
  char text[INET6_ADDRSTRLEN + IF_NAMESIZE + 2] = "";
  if (sa && sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, text, sizeof(text));
  } else if (sa && sa->sa_family == AF_INET6) {
    auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &s6->sin6_addr, text, sizeof(text));
    char ifname[IF_NAMESIZE];
    if (s6->sin6_scope_id && if_indextoname(s6->sin6_scope_id, ifname)) {
      strncat(text, "%", sizeof(text) - strlen(text) - 1);
      strncat(text, ifname, sizeof(text) - strlen(text) - 1);
    }
  }
  o.Set("srcAddr", text[0] ? Napi::Value(Napi::String::New(env, text)) : env.Null());
  return o;
}

// cmCreateQp(id, { pd, sendCq, recvCq, maxSendWr, maxRecvWr, maxSendSge, maxRecvSge, maxInlineData })
Napi::Value CmCreateQp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (!info[1].IsObject()) ThrowType(env, "QP parameters must be an object");
  Napi::Object p = info[1].As<Napi::Object>();
  auto handleOf = [&](const char* k, Kind kind) -> void* {
    Napi::Value v = p.Get(k);
    auto it = v.IsNumber() ? objs.find(v.As<Napi::Number>().Uint32Value()) : objs.end();
    if (it == objs.end() || it->second.kind != kind) ThrowType(env, std::string(k) + " is not a valid " + KindName(kind) + " handle");
    return it->second.ptr;
  };
  auto u32 = [&](const char* k, uint32_t d) -> uint32_t {
    Napi::Value v = p.Get(k);
    return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : d;
  };
  ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  auto* pd = static_cast<ibv_pd*>(handleOf("pd", Kind::Pd));
  a.send_cq = static_cast<ibv_cq*>(handleOf("sendCq", Kind::Cq));
  a.recv_cq = static_cast<ibv_cq*>(handleOf("recvCq", Kind::Cq));
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = u32("maxSendWr", 64);
  a.cap.max_recv_wr = u32("maxRecvWr", 64);
  a.cap.max_send_sge = u32("maxSendSge", 1);
  a.cap.max_recv_sge = u32("maxRecvSge", 1);
  a.cap.max_inline_data = u32("maxInlineData", 0);
  if (rdma_create_qp(id, pd, &a) < 0) ThrowErrno(env, errno, "rdma_create_qp");
  Napi::Object o = Napi::Object::New(env);
  o.Set("qpNum", Num(env, id->qp->qp_num));
  o.Set("maxSendWr", Num(env, a.cap.max_send_wr));
  o.Set("maxRecvWr", Num(env, a.cap.max_recv_wr));
  o.Set("maxInlineData", Num(env, a.cap.max_inline_data));
  return o;
}

Napi::Value CmDestroyQp(const Napi::CallbackInfo& info) {
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (id->qp) rdma_destroy_qp(id);
  return info.Env().Undefined();
}

// cmDestroyQpAsync(id) -> Promise<void>: the QP destroy (rdma_destroy_qp) on a libuv worker
// thread, for a destroy that can block for seconds (rxe: packets waiting on an unresolved
// neighbour). Until it settles the id and the CQs the QP uses are busy: any call with their
// handles is an EBUSY error, so nothing on the main thread posts to the QP, polls its CQs or
// destroys them meanwhile. ibv_destroy_qp is called as rdma_destroy_qp does (our CQs are the
// caller's, librdmacm created none), so that its failure is reported: the QP then stays with the
// id (a later cmDestroyId, or the exit cleanup, tries again). An id without a QP resolves at once.
class QpDestroyWorker : public Napi::AsyncWorker {
 public:
  QpDestroyWorker(Napi::Env env, rdma_cm_id* id, std::vector<uint32_t> handles)
      : Napi::AsyncWorker(env, "srp-nbd:cmDestroyQp"), deferred_(Napi::Promise::Deferred::New(env)), id_(id),
        handles_(std::move(handles)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    int rc = ibv_destroy_qp(id_->qp);  // an errno value, as verbs calls return
    if (rc == 0) id_->qp = nullptr;
    else err_ = rc > 0 ? rc : (errno ? errno : EIO);
    std::lock_guard<std::mutex> g(inflightMu);
    inflight--;
    inflightCv.notify_all();
  }
  void OnOK() override {
    Unbusy();
    if (err_ != 0) deferred_.Reject(ErrnoError(Env(), err_, "ibv_destroy_qp").Value());
    else deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    Unbusy();
    deferred_.Reject(e.Value());
  }

 private:
  void Unbusy() {
    for (uint32_t h : handles_) {
      auto it = objs.find(h);
      if (it != objs.end()) it->second.busy = false;
    }
  }
  Napi::Promise::Deferred deferred_;
  rdma_cm_id* id_;
  std::vector<uint32_t> handles_;
  int err_ = 0;
};

Napi::Value CmDestroyQpAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* id = Get<rdma_cm_id>(info, 0, Kind::Id);
  if (!id->qp) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  std::vector<uint32_t> handles{ArgU32(info, 0, "id")};
  for (auto& [h, o] : objs)
    if (o.kind == Kind::Cq && (o.ptr == id->qp->send_cq || o.ptr == id->qp->recv_cq)) handles.push_back(h);
  for (uint32_t h : handles) objs[h].busy = true;
  auto* w = new QpDestroyWorker(env, id, std::move(handles));
  Napi::Promise p = w->Promise();
  {
    std::lock_guard<std::mutex> g(inflightMu);
    inflight++;
  }
  w->Queue();  // deletes itself after OnOK/OnError
  return p;
}

ibv_qp* QpOf(const Napi::CallbackInfo& info, size_t i) {
  auto* id = Get<rdma_cm_id>(info, i, Kind::Id);
  if (!id->qp) {
    Napi::Error e = Napi::Error::New(info.Env(), "cm id has no QP");
    e.Set("code", Napi::String::New(info.Env(), "EBADF"));
    throw e;
  }
  return id->qp;
}

// qpQuery(id) -> { state, timeout, retryCnt, rnrRetry, minRnrTimer, maxSendWr, maxRecvWr, maxInlineData }
Napi::Value QpQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  ibv_qp_attr a;
  ibv_qp_init_attr ia;
  int rc = ibv_query_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MIN_RNR_TIMER | IBV_QP_CAP, &ia);
  if (rc) ThrowErrno(env, rc, "ibv_query_qp");
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Num(env, a.qp_state));
  o.Set("timeout", Num(env, a.timeout));
  o.Set("retryCnt", Num(env, a.retry_cnt));
  o.Set("rnrRetry", Num(env, a.rnr_retry));
  o.Set("minRnrTimer", Num(env, a.min_rnr_timer));
  o.Set("maxSendWr", Num(env, a.cap.max_send_wr));
  o.Set("maxRecvWr", Num(env, a.cap.max_recv_wr));
  o.Set("maxInlineData", Num(env, a.cap.max_inline_data));
  return o;
}

// qpModify(id, { state?, timeout?, retryCnt?, rnrRetry?, minRnrTimer? }): only the given attributes.
Napi::Value QpModify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  if (!info[1].IsObject()) ThrowType(env, "QP attributes must be an object");
  Napi::Object p = info[1].As<Napi::Object>();
  ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  int mask = 0;
  auto take = [&](const char* k, int bit, auto setter) {
    Napi::Value v = p.Get(k);
    if (v.IsNumber()) {
      setter(v.As<Napi::Number>().Uint32Value());
      mask |= bit;
    }
  };
  take("state", IBV_QP_STATE, [&](uint32_t v) { a.qp_state = static_cast<ibv_qp_state>(v); });
  take("timeout", IBV_QP_TIMEOUT, [&](uint32_t v) { a.timeout = static_cast<uint8_t>(v); });
  take("retryCnt", IBV_QP_RETRY_CNT, [&](uint32_t v) { a.retry_cnt = static_cast<uint8_t>(v); });
  take("rnrRetry", IBV_QP_RNR_RETRY, [&](uint32_t v) { a.rnr_retry = static_cast<uint8_t>(v); });
  take("minRnrTimer", IBV_QP_MIN_RNR_TIMER, [&](uint32_t v) { a.min_rnr_timer = static_cast<uint8_t>(v); });
  int rc = ibv_modify_qp(qp, &a, mask);
  if (rc) ThrowErrno(env, rc, "ibv_modify_qp");
  return env.Undefined();
}

/* ------------------------------------------------------------- verbs */

Napi::Value PdAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  ibv_pd* pd = ibv_alloc_pd(c);
  if (!pd) ThrowErrno(env, errno ? errno : ENOMEM, "ibv_alloc_pd");
  return Num(env, Put(Kind::Pd, pd));
}

Napi::Value PdDealloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* pd = Get<ibv_pd>(info, 0, Kind::Pd);
  int rc = ibv_dealloc_pd(pd);
  if (rc) ThrowErrno(env, rc, "ibv_dealloc_pd");
  objs.erase(ArgU32(info, 0, "pd"));
  return env.Undefined();
}

Napi::Value CompChannelCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  ibv_comp_channel* ch = ibv_create_comp_channel(c);
  if (!ch) ThrowErrno(env, errno ? errno : ENOMEM, "ibv_create_comp_channel");
  SetNonBlocking(ch->fd);
  Napi::Object o = Napi::Object::New(env);
  o.Set("channel", Num(env, Put(Kind::CompChannel, ch)));
  o.Set("fd", Num(env, ch->fd));
  return o;
}

Napi::Value CompChannelDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* ch = Get<ibv_comp_channel>(info, 0, Kind::CompChannel);
  int rc = ibv_destroy_comp_channel(ch);
  if (rc) ThrowErrno(env, rc > 0 ? rc : errno, "ibv_destroy_comp_channel");
  objs.erase(ArgU32(info, 0, "channel"));
  return env.Undefined();
}

// cqCreate(ctx, cqe, compChannel) -> cq
Napi::Value CqCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* c = Get<ibv_context>(info, 0, Kind::Ctx);
  int cqe = ArgI32(info, 1, "cqe");
  auto* ch = Get<ibv_comp_channel>(info, 2, Kind::CompChannel);
  // optional completion vector (ib_srp comp_vector); must be below the device's num_comp_vectors
  int vector = info.Length() > 3 && info[3].IsNumber() ? ArgI32(info, 3, "compVector") : 0;
  if (vector < 0 || vector >= c->num_comp_vectors)
    ThrowType(env, "compVector " + std::to_string(vector) + " is out of range: the device has " +
                       std::to_string(c->num_comp_vectors) + " completion vectors");
  uint32_t h = nextHandle;
  ibv_cq* cq = ibv_create_cq(c, cqe, reinterpret_cast<void*>(static_cast<uintptr_t>(h)), ch, vector);
  if (!cq) ThrowErrno(env, errno ? errno : ENOMEM, "ibv_create_cq");
  return Num(env, Put(Kind::Cq, cq));
}

Napi::Value CqDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* cq = Get<ibv_cq>(info, 0, Kind::Cq);
  int rc = ibv_destroy_cq(cq);
  if (rc) ThrowErrno(env, rc, "ibv_destroy_cq");
  objs.erase(ArgU32(info, 0, "cq"));
  return env.Undefined();
}

Napi::Value CqReqNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* cq = Get<ibv_cq>(info, 0, Kind::Cq);
  int rc = ibv_req_notify_cq(cq, ArgBool(info, 1, false) ? 1 : 0);
  if (rc) ThrowErrno(env, rc, "ibv_req_notify_cq");
  return env.Undefined();
}

// cqGetEvent(compChannel) -> cq handle, or 0 when no event is queued. The event is acknowledged.
Napi::Value CqGetEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* ch = Get<ibv_comp_channel>(info, 0, Kind::CompChannel);
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  if (ibv_get_cq_event(ch, &cq, &ctx) < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Num(env, 0);
    ThrowErrno(env, errno, "ibv_get_cq_event");
  }
  ibv_ack_cq_events(cq, 1);
  return Num(env, static_cast<double>(reinterpret_cast<uintptr_t>(ctx)));
}

// Busy polling checks the clock once per this many empty polls (in a guest the clock may be a
// system call and an emulated device read; an empty ibv_poll_cq is a few memory reads).
constexpr int SPIN_CLOCK_EVERY = 64;

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// cqPoll(cq, out, max, spinUs = 0) -> n. Each completion is a 32-byte little-endian record in out:
// wr_id u64 | status u32 | opcode u32 | byte_len u32 | qp_num u32 | vendor_err u32 | wc_flags u32
// With spinUs > 0 an empty CQ is polled again until a completion arrives or spinUs have passed
// (busy polling: the caller decides when it is worth a CPU).
constexpr size_t WC_RECORD = 32;

void PutWc(uint8_t* r, const ibv_wc& wc) {
  uint32_t f[6] = {wc.status, wc.opcode, wc.byte_len, wc.qp_num, wc.vendor_err, wc.wc_flags};
  memcpy(r, &wc.wr_id, 8);
  memcpy(r + 8, f, sizeof f);
}

Napi::Value CqPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* cq = Get<ibv_cq>(info, 0, Kind::Cq);
  auto out = ArgBuffer(info, 1, "out");
  size_t max = ArgU32(info, 2, "max");
  uint32_t spinUs = info.Length() > 3 && !info[3].IsUndefined() ? ArgU32(info, 3, "spinUs") : 0;
  if (max * WC_RECORD > out.Length()) max = out.Length() / WC_RECORD;
  ibv_wc wc[32];
  size_t total = 0;
  int64_t deadline = 0;
  for (int polls = 0;; polls++) {
    while (total < max) {
      int want = static_cast<int>(std::min<size_t>(32, max - total));
      int n = ibv_poll_cq(cq, want, wc);
      if (n < 0) ThrowErrno(env, EIO, "ibv_poll_cq");
      for (int i = 0; i < n; i++) PutWc(out.Data() + (total + i) * WC_RECORD, wc[i]);
      total += n;
      if (n < want) break;
    }
    if (total > 0 || spinUs == 0 || max == 0) break;
    if (polls % SPIN_CLOCK_EVERY != 0) continue;
    int64_t now = MonotonicNs();
    if (deadline == 0)
      deadline = now + static_cast<int64_t>(spinUs) * 1000;
    else if (now >= deadline)
      break;
  }
  return Num(env, static_cast<double>(total));
}

// mrReg(pd, buffer, access) -> { mr, addr, lkey, rkey, length }. The Buffer stays referenced
// (and so its memory alive) until mrDereg.
Napi::Value MrReg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* pd = Get<ibv_pd>(info, 0, Kind::Pd);
  auto buf = ArgBuffer(info, 1, "buffer");
  int access = ArgI32(info, 2, "access");
  if (buf.Length() == 0) ThrowType(env, "cannot register an empty buffer");
  ibv_mr* mr = ibv_reg_mr(pd, buf.Data(), buf.Length(), access);
  if (!mr) ThrowErrno(env, errno ? errno : ENOMEM, "ibv_reg_mr");
  uint32_t h = Put(Kind::Mr, mr);
  objs[h].buf = Napi::Persistent(buf);
  Napi::Object o = Napi::Object::New(env);
  o.Set("mr", Num(env, h));
  o.Set("addr", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(buf.Data()))));
  o.Set("lkey", Num(env, mr->lkey));
  o.Set("rkey", Num(env, mr->rkey));
  o.Set("length", Num(env, static_cast<double>(buf.Length())));
  return o;
}

Napi::Value MrDereg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* mr = Get<ibv_mr>(info, 0, Kind::Mr);
  int rc = ibv_dereg_mr(mr);
  if (rc) ThrowErrno(env, rc, "ibv_dereg_mr");
  objs.erase(ArgU32(info, 0, "mr"));
  return env.Undefined();
}

// postSend(id, wrId, opcode, addr, length, lkey, flags, remoteAddr, rkey). length 0 posts no SGE
// (a zero-length RDMA WRITE is the keep-alive probe).
Napi::Value PostSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  ibv_sge sge;
  ibv_send_wr wr, *bad = nullptr;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = ArgU64(info, 1, "wrId");
  wr.opcode = static_cast<ibv_wr_opcode>(ArgU32(info, 2, "opcode"));
  sge.addr = ArgU64(info, 3, "addr");
  sge.length = ArgU32(info, 4, "length");
  sge.lkey = ArgU32(info, 5, "lkey");
  wr.send_flags = ArgU32(info, 6, "flags");
  wr.wr.rdma.remote_addr = ArgU64(info, 7, "remoteAddr");
  wr.wr.rdma.rkey = ArgU32(info, 8, "rkey");
  wr.sg_list = sge.length ? &sge : nullptr;
  wr.num_sge = sge.length ? 1 : 0;
  int rc = ibv_post_send(qp, &wr, &bad);
  if (rc) ThrowErrno(env, rc, "ibv_post_send");
  return env.Undefined();
}

// postRecv(id, wrId, addr, length, lkey)
Napi::Value PostRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  ibv_sge sge;
  ibv_recv_wr wr, *bad = nullptr;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = ArgU64(info, 1, "wrId");
  sge.addr = ArgU64(info, 2, "addr");
  sge.length = ArgU32(info, 3, "length");
  sge.lkey = ArgU32(info, 4, "lkey");
  wr.sg_list = &sge;
  wr.num_sge = 1;
  int rc = ibv_post_recv(qp, &wr, &bad);
  if (rc) ThrowErrno(env, rc, "ibv_post_recv");
  return env.Undefined();
}

// Work request lists: one ibv_post_send/ibv_post_recv for many WRs, chained, so a provider that
// rings a doorbell per call (rxe: a write() into the kernel) rings it once per list. Records are
// little-endian, laid out as SEND_WR_LEN / RECV_WR_LEN in src/native/rdma-constants.ts:
//   send: wr_id u64 | addr u64 | remote_addr u64 | length u32 | lkey u32 | rkey u32 | opcode u32 |
//         send_flags u32 | reserved u32                                             (48 bytes)
//   recv: wr_id u64 | addr u64 | length u32 | lkey u32                              (24 bytes)
// A send record of length 0 posts no SGE (the zero-length RDMA WRITE of the keep-alive probe).
constexpr size_t SEND_WR = 48, RECV_WR = 24, MAX_LIST = 1024;

template <typename T>
T Field(const uint8_t* r, size_t off) {
  T v;
  memcpy(&v, r + off, sizeof v);
  return v;
}

size_t ListCount(const Napi::CallbackInfo& info, const Napi::Buffer<uint8_t>& wrs, size_t rec) {
  size_t n = ArgU32(info, 2, "count");
  if (n > MAX_LIST || n * rec > wrs.Length()) ThrowType(info.Env(), "count exceeds the work request buffer");
  return n;
}

// postSendList(id, wrs, count)
Napi::Value PostSendList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  auto wrs = ArgBuffer(info, 1, "wrs");
  size_t n = ListCount(info, wrs, SEND_WR);
  if (n == 0) return env.Undefined();
  std::vector<ibv_send_wr> wr(n);
  std::vector<ibv_sge> sge(n);
  for (size_t i = 0; i < n; i++) {
    const uint8_t* r = wrs.Data() + i * SEND_WR;
    memset(&wr[i], 0, sizeof wr[i]);
    wr[i].wr_id = Field<uint64_t>(r, 0);
    sge[i].addr = Field<uint64_t>(r, 8);
    wr[i].wr.rdma.remote_addr = Field<uint64_t>(r, 16);
    sge[i].length = Field<uint32_t>(r, 24);
    sge[i].lkey = Field<uint32_t>(r, 28);
    wr[i].wr.rdma.rkey = Field<uint32_t>(r, 32);
    wr[i].opcode = static_cast<ibv_wr_opcode>(Field<uint32_t>(r, 36));
    wr[i].send_flags = Field<uint32_t>(r, 40);
    wr[i].sg_list = sge[i].length ? &sge[i] : nullptr;
    wr[i].num_sge = sge[i].length ? 1 : 0;
    wr[i].next = i + 1 < n ? &wr[i + 1] : nullptr;
  }
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(qp, wr.data(), &bad);
  if (rc) ThrowErrno(env, rc, "ibv_post_send");
  return env.Undefined();
}

// postRecvList(id, wrs, count)
Napi::Value PostRecvList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = QpOf(info, 0);
  auto wrs = ArgBuffer(info, 1, "wrs");
  size_t n = ListCount(info, wrs, RECV_WR);
  if (n == 0) return env.Undefined();
  std::vector<ibv_recv_wr> wr(n);
  std::vector<ibv_sge> sge(n);
  for (size_t i = 0; i < n; i++) {
    const uint8_t* r = wrs.Data() + i * RECV_WR;
    memset(&wr[i], 0, sizeof wr[i]);
    wr[i].wr_id = Field<uint64_t>(r, 0);
    sge[i].addr = Field<uint64_t>(r, 8);
    sge[i].length = Field<uint32_t>(r, 16);
    sge[i].lkey = Field<uint32_t>(r, 20);
    wr[i].sg_list = &sge[i];
    wr[i].num_sge = 1;
    wr[i].next = i + 1 < n ? &wr[i + 1] : nullptr;
  }
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(qp, wr.data(), &bad);
  if (rc) ThrowErrno(env, rc, "ibv_post_recv");
  return env.Undefined();
}

// rdmaObjectCounts() -> { channels, ids, qps, pds, compChannels, cqs, mrs }: for leak checks.
Napi::Value ObjectCounts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t n[7] = {0};
  uint32_t qps = 0;
  for (auto& [h, o] : objs) {
    n[static_cast<int>(o.kind)]++;
    // a busy id's QP is still being destroyed (and its qp field is the worker's to write)
    if (o.kind == Kind::Id && (o.busy || static_cast<rdma_cm_id*>(o.ptr)->qp)) qps++;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("channels", Num(env, n[0]));
  r.Set("ids", Num(env, n[1]));
  r.Set("qps", Num(env, qps));
  r.Set("pds", Num(env, n[3]));
  r.Set("compChannels", Num(env, n[4]));
  r.Set("cqs", Num(env, n[5]));
  r.Set("mrs", Num(env, n[6]));
  return r;
}

// At environment teardown: release whatever JS left open, dependents first. QP destroys still
// running on worker threads are waited for first (their promises are never settled now): then
// no object is in use by another thread, and a QP they destroyed is no longer the id's.
void Cleanup(void*) {
  {
    std::unique_lock<std::mutex> g(inflightMu);
    inflightCv.wait(g, [] { return inflight == 0; });
  }
  for (auto& [h, o] : objs)
    if (o.kind == Kind::Id && static_cast<rdma_cm_id*>(o.ptr)->qp) rdma_destroy_qp(static_cast<rdma_cm_id*>(o.ptr));
  const Kind order[] = {Kind::Mr, Kind::Cq, Kind::CompChannel, Kind::Pd, Kind::Id, Kind::Channel};
  for (Kind k : order) {
    for (auto it = objs.begin(); it != objs.end();) {
      if (it->second.kind != k) { ++it; continue; }
      switch (k) {
        case Kind::Mr: ibv_dereg_mr(static_cast<ibv_mr*>(it->second.ptr)); it->second.buf.Reset(); break;
        case Kind::Cq: ibv_destroy_cq(static_cast<ibv_cq*>(it->second.ptr)); break;
        case Kind::CompChannel: ibv_destroy_comp_channel(static_cast<ibv_comp_channel*>(it->second.ptr)); break;
        case Kind::Pd: ibv_dealloc_pd(static_cast<ibv_pd*>(it->second.ptr)); break;
        case Kind::Id: rdma_destroy_id(static_cast<rdma_cm_id*>(it->second.ptr)); break;
        case Kind::Channel: rdma_destroy_event_channel(static_cast<rdma_event_channel*>(it->second.ptr)); break;
        default: break;
      }
      it = objs.erase(it);
    }
  }
}

}  // namespace

void InitRdma(Napi::Env env, Napi::Object exports) {
  struct { const char* name; Napi::Value (*fn)(const Napi::CallbackInfo&); } fns[] = {
    {"getDeviceList", GetDeviceList}, {"ctxQuery", CtxQuery}, {"portQuery", PortQuery}, {"portGid", PortGid},
    {"getAsyncEvent", GetAsyncEvent}, {"cmCreateChannel", CmCreateChannel}, {"cmDestroyChannel", CmDestroyChannel},
    {"cmCreateId", CmCreateId}, {"cmDestroyId", CmDestroyId}, {"cmResolveAddr", CmResolveAddr},
    {"cmResolveRoute", CmResolveRoute}, {"cmSetOption", CmSetOption}, {"cmGetEvent", CmGetEvent},
    {"cmConnect", CmConnect}, {"cmDisconnect", CmDisconnect}, {"cmIdInfo", CmIdInfo},
    {"cmCreateQp", CmCreateQp}, {"cmDestroyQp", CmDestroyQp},
    {"cmDestroyQpAsync", CmDestroyQpAsync}, {"qpQuery", QpQuery}, {"qpModify", QpModify},
    {"pdAlloc", PdAlloc}, {"pdDealloc", PdDealloc}, {"compChannelCreate", CompChannelCreate},
    {"compChannelDestroy", CompChannelDestroy}, {"cqCreate", CqCreate}, {"cqDestroy", CqDestroy},
    {"cqReqNotify", CqReqNotify}, {"cqGetEvent", CqGetEvent}, {"cqPoll", CqPoll}, {"mrReg", MrReg},
    {"mrDereg", MrDereg}, {"postSend", PostSend}, {"postRecv", PostRecv}, {"postSendList", PostSendList},
    {"postRecvList", PostRecvList}, {"rdmaObjectCounts", ObjectCounts},
  };
  for (auto& f : fns) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
  napi_add_env_cleanup_hook(env, Cleanup, nullptr);
}

}  // namespace srpnbd

// Shared helpers of the srp-nbd native addon.
//
// Contract: this addon only makes system calls. Every function is non-blocking
// (netlinkSendAsync makes its one blocking call on a libuv worker), returns plain values, and
// reports failures as a JS Error carrying `errno` (number), `code` (e.g. "ENODEV") and `syscall`
// (the failing call). Protocol logic, retries, timers and state all live in TypeScript; the
// typed surface is src/native/native.ts.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstdint>
#include <string>

namespace srpnbd {

// A JS Error for errno `err` raised by `syscall` (errno, code, syscall set), and one thrown.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall);
// Throws a JS TypeError / RangeError with a message.
[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg);

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
int32_t ArgI32(const Napi::CallbackInfo& info, size_t i, const char* name);
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name);  // bigint or number
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, bool dflt);
int SetNonBlocking(int fd);

void InitSys(Napi::Env env, Napi::Object exports);
void InitProc(Napi::Env env, Napi::Object exports);
void InitRdma(Napi::Env env, Napi::Object exports);

}  // namespace srpnbd

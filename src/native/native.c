/*
 * What Node has no call for:
 *
 * trim(): hands the C heap's free pages back to the system (glibc's malloc_trim). After a burst of traffic the
 * freed buffers leave gaps in the heap that glibc only returns from its top; a long-running tunnel would otherwise
 * keep its peak footprint for as long as it runs. Elsewhere a no-op.
 *
 * quickAck(fd): sets TCP_QUICKACK on a TCP socket (Linux), so that a delayed ACK pending on it goes out now and the
 * next segments are acknowledged at once. The kernel clears it again by itself; it is set anew where it matters.
 * False where the option does not exist or the fd is not a TCP socket.
 */
#include <node_api.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#ifdef __linux__
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#endif

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  int released = 0;
#ifdef __GLIBC__
  released = malloc_trim(0);
#endif
  napi_value result;
  if (napi_get_boolean(env, released != 0, &result) != napi_ok) return NULL;
  return result;
}

static napi_value quick_ack(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  int set = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc >= 1 && napi_get_value_int32(env, argv[0], &fd) != napi_ok) fd = -1;
#if defined(__linux__) && defined(TCP_QUICKACK)
  if (fd >= 0) {
    int one = 1;
    set = setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) == 0;
  }
#endif
  napi_value result;
  if (napi_get_boolean(env, set != 0, &result) != napi_ok) return NULL;
  return result;
}

static int export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) != napi_ok) return 0;
  return napi_set_named_property(env, exports, name, fn) == napi_ok;
}

NAPI_MODULE_INIT() {
  if (!export_fn(env, exports, "trim", trim)) return NULL;
  if (!export_fn(env, exports, "quickAck", quick_ack)) return NULL;
  return exports;
}

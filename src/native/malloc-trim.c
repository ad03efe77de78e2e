/*
 * trim(): hands the C heap's free pages back to the system (glibc's malloc_trim), which Node has no call for.
 * After a burst of traffic the freed buffers leave gaps in the heap that glibc only returns from its top; a
 * long-running tunnel would otherwise keep its peak footprint for as long as it runs. Elsewhere a no-op.
 */
#include <node_api.h>

#ifdef __GLIBC__
#include <malloc.h>
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

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != napi_ok) return NULL;
  return exports;
}

// host: plays Envoy's side of the Go HTTP filter ABI (Envoy v1.39.0, contrib/golang) for a real
// filters.so. It dlopens the library, provides every C function the library leaves undefined
// (api.h), and drives the exported envoyGoFilter* entry points in Envoy's order, reading
// commands from stdin and printing one result line per request. See README.md for the
// protocol and for which Envoy behaviours it reproduces (with the Envoy source of each).
//
// Build: gcc -O2 -Wall -rdynamic -o host host.c -ldl -lpthread
// (-rdynamic: the library resolves envoyGoFilter* against this executable, as against Envoy.)

#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---- api.h (contrib/golang/common/go/api/api.h): the layouts both sides compile in ----------

typedef struct {
  const char* data;
  uint64_t len;
} Cstring;

struct httpRequest;
typedef struct {
  struct httpRequest* req;
  int is_encoding;
  int state;
} processState;

typedef struct httpRequest {
  Cstring plugin_name;
  uint64_t configId;
  uint32_t worker_id;
  _Atomic(int) is_golang_processing_log;
} httpRequest;

typedef struct {
  uint64_t plugin_name_ptr;
  uint64_t plugin_name_len;
  uint64_t config_ptr;
  uint64_t config_len;
  int is_route_config;
  uint32_t concurrency;
} httpConfig;

typedef enum { Set, Append, Prepend } bufferAction;
typedef enum { HeaderSet, HeaderAdd } headerAction;
typedef enum {
  CAPIOK = 0,
  CAPIFilterIsGone = -1,
  CAPIFilterIsDestroy = -2,
  CAPINotInGo = -3,
  CAPIInvalidPhase = -4,
  CAPIValueNotFound = -5,
  CAPIYield = -6,
  CAPIInternalFailure = -7,
  CAPISerializationFailure = -8,
  CAPIInvalidScene = -9,
  CAPIInvalidIPAddress = -10,
} CAPIStatus;

// A Go string as cgo lays it out (libgolang.h _GoString_).
typedef struct {
  const char* p;
  ptrdiff_t n;
} GoString;

// processor_state.h enum class FilterState; Go's pkg/http/filter.go reads 1, 4, 6.
enum { WaitingHeader, ProcessingHeader, WaitingData, WaitingAllData, ProcessingData, WaitingTrailer, ProcessingTrailer, Done };
// processor_state.h enum class GolangStatus (= api.StatusType 0..5).
enum { Running, LocalReply, Continue, StopAndBuffer, StopAndBufferWatermark, StopNoBuffer };
// golang_filter.h EnvoyValue ids (= pkg/http/capi_impl.go Value* constants).
enum {
  ValueRouteName = 1, ValueFilterChainName, ValueProtocol, ValueResponseCode, ValueResponseCodeDetails,
  ValueAttemptCount, ValueDownstreamLocalAddress, ValueDownstreamRemoteAddress, ValueUpstreamLocalAddress,
  ValueUpstreamRemoteAddress, ValueUpstreamClusterName, ValueVirtualClusterName,
  ValueSslConnectionExists = 100, ValueSslPeerCertificatePresented, ValueSslPeerCertificateValidated,
  ValueSslCiphersuiteId, ValueSslValidFromPeerCertificate, ValueSslExpirationPeerCertificate,
  ValueSslSha256PeerCertificateDigest, ValueSslSerialNumberPeerCertificate, ValueSslSubjectPeerCertificate,
  ValueSslIssuerPeerCertificate, ValueSslSubjectLocalCertificate, ValueSslTlsVersion, ValueSslCiphersuiteString,
  ValueSslSessionId, ValueSslUrlEncodedPemEncodedPeerCertificate, ValueSslUrlEncodedPemEncodedPeerCertificateChain,
  ValueSslUriSanPeerCertificate, ValueSslUriSanLocalCertificate, ValueSslDnsSansPeerCertificate,
  ValueSslDnsSansLocalCertificate,
};
enum { AccessLogDownstreamEnd = 6 };
enum { DestroyNormal = 0, DestroyTerminate = 1 };

// ---- the library's entry points (dso.h HttpFilterDsoImpl) -----------------------------------

static uint64_t (*go_new_config)(httpConfig*);
static uint64_t (*go_merge_config)(uint64_t, uint64_t, uint64_t, uint64_t);
static void (*go_destroy_config)(uint64_t, long long);
static uint64_t (*go_on_header)(processState*, uint64_t, uint64_t, uint64_t);
static uint64_t (*go_on_data)(processState*, uint64_t, uint64_t, uint64_t);
static void (*go_on_log)(httpRequest*, int, processState*, processState*, uint64_t, uint64_t, uint64_t,
                         uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
static void (*go_on_stream_complete)(httpRequest*);
static void (*go_on_destroy)(httpRequest*, uint64_t);
static void (*go_sema_dec)(httpRequest*);

// ---- small utilities ---------------------------------------------------------------------------

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;  // host state touched from Go threads
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER; // stdout lines
static pthread_t dispatcher;                               // the one worker thread (worker_id 0)
static atomic_int log_level = 2;                           // spdlog info, Envoy's default
static atomic_long live_requests;                          // HttpRequestInternal not yet finalized
static atomic_long live_http_configs;                      // httpConfigInternal not yet finalized

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "host: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort(); // Envoy's RELEASE_ASSERT / PANIC
}

static void* xmalloc(size_t n) {
  void* p = calloc(1, n ? n : 1);
  if (!p) die("out of memory");
  return p;
}

static char* xstrndup(const char* s, size_t n) {
  char* p = xmalloc(n + 1);
  memcpy(p, s, n);
  return p;
}


// growable byte string
typedef struct {
  char* p;
  size_t n, cap;
} str;

static void str_put(str* s, const char* p, size_t n) {
  if (s->n + n + 1 > s->cap) {
    s->cap = (s->n + n + 1) * 2;
    s->p = realloc(s->p, s->cap);
    if (!s->p) die("out of memory");
  }
  memcpy(s->p + s->n, p, n);
  s->n += n;
  s->p[s->n] = 0;
}
static void str_puts(str* s, const char* p) { str_put(s, p, strlen(p)); }
static void str_set(str* s, const char* p, size_t n) {
  s->n = 0;
  str_put(s, p ? p : "", p ? n : 0);
}

// escape: the protocol's value encoding (%XX for '%', tab, CR, LF and other control bytes).
static void str_esc(str* s, const char* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '%' || c < 0x20 || c == 0x7f) {
      char b[4];
      snprintf(b, sizeof b, "%%%02X", c);
      str_put(s, b, 3);
    } else {
      str_put(s, (const char*)&p[i], 1);
    }
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// unesc decodes %XX in place and returns the new length.
static size_t unesc(char* p) {
  size_t w = 0;
  for (size_t r = 0; p[r]; r++) {
    if (p[r] == '%' && hexval(p[r + 1]) >= 0 && hexval(p[r + 2]) >= 0) {
      p[w++] = (char)(hexval(p[r + 1]) * 16 + hexval(p[r + 2]));
      r += 2;
    } else {
      p[w++] = p[r];
    }
  }
  p[w] = 0;
  return w;
}

static void out_line(str* s) {
  pthread_mutex_lock(&out_mu);
  fwrite(s->p, 1, s->n, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  pthread_mutex_unlock(&out_mu);
}

// ---- header maps (Http::HeaderMapImpl: ordered entries, lower-case keys, byteSize) -------------

typedef struct {
  str k, v;
} hdr;
typedef struct {
  hdr* h;
  int n, cap;
  uint64_t bytes;
} hmap;

static void hmap_add(hmap* m, const char* k, size_t kl, const char* v, size_t vl) {
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 16;
    m->h = realloc(m->h, m->cap * sizeof(hdr));
    if (!m->h) die("out of memory");
  }
  hdr* e = &m->h[m->n++];
  memset(e, 0, sizeof *e);
  str_put(&e->k, "", 0);
  for (size_t i = 0; i < kl; i++) { // Http::LowerCaseString
    char c = (char)tolower((unsigned char)k[i]);
    str_put(&e->k, &c, 1);
  }
  str_put(&e->v, v, vl);
  m->bytes += kl + vl;
}

static bool key_eq(const hdr* e, const char* k, size_t kl) {
  if (e->k.n != kl) return false;
  for (size_t i = 0; i < kl; i++)
    if (e->k.p[i] != (char)tolower((unsigned char)k[i])) return false;
  return true;
}

static hdr* hmap_get(hmap* m, const char* k, size_t kl) {
  for (int i = 0; i < m->n; i++)
    if (key_eq(&m->h[i], k, kl)) return &m->h[i];
  return NULL;
}

static void hmap_remove(hmap* m, const char* k, size_t kl) {
  int w = 0;
  for (int i = 0; i < m->n; i++) {
    if (key_eq(&m->h[i], k, kl)) {
      m->bytes -= m->h[i].k.n + m->h[i].v.n;
      free(m->h[i].k.p);
      free(m->h[i].v.p);
    } else {
      m->h[w++] = m->h[i];
    }
  }
  m->n = w;
}

static void hmap_free(hmap* m) {
  for (int i = 0; i < m->n; i++) {
    free(m->h[i].k.p);
    free(m->h[i].v.p);
  }
  free(m->h);
  memset(m, 0, sizeof *m);
}

// golang_filter.cc copyHeaderMapToGo: keys and values packed into Go's buffer, in map order.
static void hmap_to_go(const hmap* m, GoString* strs, char* buf) {
  int i = 0;
  for (int j = 0; j < m->n; j++) {
    const hdr* e = &m->h[j];
    strs[i].n = (ptrdiff_t)e->k.n;
    strs[i].p = buf;
    memcpy(buf, e->k.p, e->k.n);
    buf += e->k.n;
    i++;
    strs[i].n = (ptrdiff_t)e->v.n;
    if (e->v.n > 0) { // Go may hand over an invalid pointer for an empty value: never touch it
      strs[i].p = buf;
      memcpy(buf, e->v.p, e->v.n);
      buf += e->v.n;
    }
    i++;
  }
}

// ---- configs: FilterConfig, httpConfigInternal, RoutePluginConfig, the metric store ----------

enum { MetricCounter = 0, MetricGauge = 1, MetricHistogram = 2 };

// The stats store: one value per (type, name), shared by every FilterConfig, as counters from the
// same scope with the same name are one stat in Envoy.
typedef struct {
  int type;
  char* name;
  _Atomic uint64_t value;
} metric;
static metric* metrics;
static int n_metrics, cap_metrics;

typedef struct fconfig fconfig;

// httpConfigInternal (golang_filter.h): the httpConfig Go keeps, with a weak ref to its config.
typedef struct {
  httpConfig c;
  fconfig* fc; // NULL once the FilterConfig is gone (the weak_ptr expired)
} hconfig;

struct fconfig {
  char* name;
  char* plugin;    // plugin_name_: Go's request plugin_name and the config's point into it
  uint64_t id;     // config_id_
  hconfig* hc;     // owned by Go once created: freed in envoyGoConfigHttpFinalize
  int refs;        // the config table's reference plus one per live filter
  struct {         // MetricStore: ids of this config's metrics
    uint32_t id;
    int idx;
  } * ids;
  int n_ids;
  uint32_t next_id[3];
};

typedef struct {
  char* name;
  char* plugin;
  httpConfig c;     // a member, as in RoutePluginConfig (no Go finalizer for route configs)
  uint64_t id;      // config_id_
  uint64_t merged;  // merged_config_id_
  uint64_t parent;  // cached_parent_id_
  int refs;
} rconfig;

#define MAXCFG 64
static fconfig* fconfigs[MAXCFG];
static rconfig* rconfigs[MAXCFG];

static void fconfig_unref(fconfig* fc) {
  if (--fc->refs > 0) return;
  // ~FilterConfig: destroy the Go config (no delay: nothing else holds this id).
  if (fc->id > 0) go_destroy_config(fc->id, 0);
  pthread_mutex_lock(&g_mu);
  if (fc->hc) fc->hc->fc = NULL;
  pthread_mutex_unlock(&g_mu);
  free(fc->ids);
  free(fc->name);
  free(fc->plugin);
  free(fc);
}

static void rconfig_unref(rconfig* rc) {
  if (--rc->refs > 0) return;
  // ~RoutePluginConfig
  if (rc->id > 0) go_destroy_config(rc->id, 0);
  if (rc->merged > 0 && rc->merged != rc->id) go_destroy_config(rc->merged, 0);
  free(rc->name);
  free(rc->plugin);
  free(rc);
}

// read_file returns the bytes of path (the serialized Any), or NULL.
static char* read_file(const char* path, size_t* n) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  str s = {0};
  char b[65536];
  size_t r;
  while ((r = fread(b, 1, sizeof b, f)) > 0) str_put(&s, b, r);
  fclose(f);
  if (!s.p) str_put(&s, "", 0);
  *n = s.n;
  return s.p;
}

// poison_free: the serialized config is a std::string local to newGoPluginConfig/getConfigId in
// Envoy, gone when the call returns; overwrite it so that Go keeping a pointer into it shows.
static void poison_free(char* p, size_t n) {
  memset(p, 0xA5, n);
  free(p);
}

static int slot(void* tab[], const char* name) {
  for (int i = 0; i < MAXCFG; i++) {
    char** nm = tab[i];
    if (nm && strcmp(*nm, name) == 0) return i;
  }
  return -1;
}
static int free_slot(void* tab[]) {
  for (int i = 0; i < MAXCFG; i++)
    if (!tab[i]) return i;
  die("too many configs");
  return -1;
}

// FilterConfig::newGoPluginConfig
static void cmd_config(char* name, char* plugin, char* path) {
  str o = {0};
  size_t n;
  char* buf = read_file(path, &n);
  if (!buf) die("config %s: cannot read %s: %s", name, path, strerror(errno));
  fconfig* fc = xmalloc(sizeof *fc);
  fc->name = strdup(name);
  fc->plugin = strdup(plugin);
  fc->refs = 1;
  fc->next_id[MetricCounter] = MetricCounter;
  fc->next_id[MetricGauge] = MetricGauge;
  fc->next_id[MetricHistogram] = MetricHistogram;
  hconfig* hc = xmalloc(sizeof *hc);
  atomic_fetch_add(&live_http_configs, 1);
  hc->fc = fc;
  hc->c.plugin_name_ptr = (uint64_t)(uintptr_t)fc->plugin;
  hc->c.plugin_name_len = strlen(fc->plugin);
  hc->c.config_ptr = (uint64_t)(uintptr_t)buf;
  hc->c.config_len = n;
  hc->c.is_route_config = 0;
  hc->c.concurrency = 1;
  fc->hc = hc;
  fc->id = go_new_config(&hc->c);
  poison_free(buf, n);
  str_puts(&o, "config\t");
  str_puts(&o, name);
  if (fc->id == 0) {
    // Envoy throws "golang filter failed to parse plugin config": the update is rejected and the
    // previous config (if any) stays. The httpConfigInternal is Go's to finalize.
    str_puts(&o, "\trejected");
    out_line(&o);
    pthread_mutex_lock(&g_mu);
    if (fc->hc) fc->hc->fc = NULL;
    pthread_mutex_unlock(&g_mu);
    free(fc->ids);
    free(fc->name);
    free(fc->plugin);
    free(fc);
    free(o.p);
    return;
  }
  int i = slot((void**)fconfigs, name);
  if (i >= 0) { // replaced: the table's reference to the old one goes; live filters keep theirs
    fconfig* old = fconfigs[i];
    fconfigs[i] = NULL;
    fconfig_unref(old);
  }
  fconfigs[free_slot((void**)fconfigs)] = fc;
  char b[64];
  snprintf(b, sizeof b, "\tok\tid=%llu", (unsigned long long)fc->id);
  str_puts(&o, b);
  out_line(&o);
  free(o.p);
}

// RoutePluginConfig constructor + getConfigId (is_route_config = 1: Parse gets nil callbacks).
static void cmd_route(char* name, char* plugin, char* path) {
  str o = {0};
  size_t n;
  char* buf = read_file(path, &n);
  if (!buf) die("route %s: cannot read %s: %s", name, path, strerror(errno));
  rconfig* rc = xmalloc(sizeof *rc);
  rc->name = strdup(name);
  rc->plugin = strdup(plugin);
  rc->refs = 1;
  rc->c.plugin_name_ptr = (uint64_t)(uintptr_t)rc->plugin;
  rc->c.plugin_name_len = strlen(rc->plugin);
  rc->c.config_ptr = (uint64_t)(uintptr_t)buf;
  rc->c.config_len = n;
  rc->c.is_route_config = 1;
  rc->id = go_new_config(&rc->c);
  poison_free(buf, n);
  str_puts(&o, "route\t");
  str_puts(&o, name);
  if (rc->id == 0) {
    str_puts(&o, "\trejected");
    out_line(&o);
    free(rc->name);
    free(rc->plugin);
    free(rc);
    free(o.p);
    return;
  }
  int i = slot((void**)rconfigs, name);
  if (i >= 0) {
    rconfig* old = rconfigs[i];
    rconfigs[i] = NULL;
    rconfig_unref(old);
  }
  rconfigs[free_slot((void**)rconfigs)] = rc;
  char b[64];
  snprintf(b, sizeof b, "\tok\tid=%llu", (unsigned long long)rc->id);
  str_puts(&o, b);
  out_line(&o);
  free(o.p);
}

// RoutePluginConfig::getMergedConfigId: cached per parent id; a changed parent (a new filter
// config) destroys the old merged id with needDelay=1, as Envoy does.
static uint64_t merged_id(rconfig* rc, fconfig* fc) {
  if (rc->merged > 0 && rc->parent == fc->id) return rc->merged;
  if (rc->merged > 0) go_destroy_config(rc->merged, 1);
  rc->merged = go_merge_config((uint64_t)(uintptr_t)rc->plugin, strlen(rc->plugin), fc->id, rc->id);
  if (rc->merged == 0) die("merge returned config id 0");
  rc->parent = fc->id;
  return rc->merged;
}

// ---- requests: Filter, ProcessorState, HttpRequestInternal ------------------------------------

typedef struct filter filter;

typedef struct {
  processState s; // first: Go gets &pstate.s as the processState*
  filter* f;
  hmap* headers;  // state.headers: set while Go may read them
  hmap* trailers;
  bool end;       // the end_stream of the phase Go is processing
} pstate;

// HttpRequestInternal: outlives the filter until Go's finalizer calls envoyGoFilterHttpFinalize.
typedef struct {
  httpRequest r; // first
  filter* f;     // weak: NULL once the filter is destroyed
  str strValue;  // req_->strValue: what string getters point Go at
} reqint;

typedef struct {
  char* d;
  size_t n;
} buffer;

typedef struct {
  int type; // 0 continue, 1 local reply
  pstate* st;
  int status;
  int code;
  str body, details;
  hmap headers;
  long long grpc;
} event;

struct filter {
  reqint* req;
  pstate dec, enc;
  fconfig* fc;
  rconfig* rc;
  // the stream, as Envoy's StreamInfo and header maps hold it
  hmap req_headers, req_trailers, resp_headers;
  str body;
  hmap filter_state, dyn_md; // key -> value; dynamic metadata value = serialized Struct
  str src, dst, sni, route_name, sans; // sans: URI SANs joined with '\0'
  bool ssl, grpc, show;
  int protocol;
  // what happened
  bool continued, destroyed, drain;
  int response_code; // 0 when none
  str response_details;
  bool has_details;
  int reply_code, reply_filter_code;
  long long reply_grpc;
  str reply_body;
  hmap reply_headers;
  bool replied;
  int header_status, data_status, trailer_status, encode_header_status, encode_data_status;
  bool unregistered;
  str notes; // unsupported calls the filter made, for the result line
};

// the dispatcher queue (Event::Dispatcher::post)
static event** queue;
static int q_n, q_cap;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;

static void post(event* e) {
  pthread_mutex_lock(&g_mu);
  if (q_n == q_cap) {
    q_cap = q_cap ? q_cap * 2 : 16;
    queue = realloc(queue, q_cap * sizeof *queue);
    if (!queue) die("out of memory");
  }
  queue[q_n++] = e;
  pthread_cond_broadcast(&q_cond);
  pthread_mutex_unlock(&g_mu);
}

static bool processing_in_go(pstate* st) {
  return st->s.state == ProcessingHeader || st->s.state == ProcessingData || st->s.state == ProcessingTrailer ||
         atomic_load(&st->s.req->is_golang_processing_log);
}

static void note(filter* f, const char* what) {
  if (f->notes.n) str_puts(&f->notes, ",");
  str_puts(&f->notes, what);
}

// the filter a CAPI call is for, or a status: envoyGoFilterProcessStateHandlerWrapper
static CAPIStatus state_filter(void* s, filter** out) {
  pstate* st = (pstate*)s;
  if (!processing_in_go(st)) return CAPINotInGo;
  reqint* r = (reqint*)st->s.req;
  if (!r->f) return CAPIFilterIsGone;
  if (r->f->destroyed) return CAPIFilterIsDestroy;
  *out = r->f;
  return CAPIOK;
}

// envoyGoFilterHandlerWrapper
static CAPIStatus req_filter(void* rp, filter** out) {
  reqint* r = (reqint*)rp;
  if (!r->f) return CAPIFilterIsGone;
  filter* f = r->f;
  if (!processing_in_go(&f->dec) && !processing_in_go(&f->enc)) return CAPINotInGo;
  if (f->destroyed) return CAPIFilterIsDestroy;
  *out = f;
  return CAPIOK;
}

static void set_str_value(filter* f, const char* p, size_t n, uint64_t* data, int* len) {
  str_set(&f->req->strValue, p, n);
  *data = (uint64_t)(uintptr_t)f->req->strValue.p;
  *len = (int)n;
}

// ---- the C API the library calls (api.h; Envoy's cgo.cc + golang_filter.cc) ------------------

#define EXPORT __attribute__((visibility("default")))
#define LOCKED_STATE(s)                 \
  filter* f;                            \
  pthread_mutex_lock(&g_mu);            \
  CAPIStatus rc_ = state_filter(s, &f); \
  if (rc_ != CAPIOK) {                  \
    pthread_mutex_unlock(&g_mu);        \
    return rc_;                         \
  }
#define LOCKED_REQ(r)                 \
  filter* f;                          \
  pthread_mutex_lock(&g_mu);          \
  CAPIStatus rc_ = req_filter(r, &f); \
  if (rc_ != CAPIOK) {                \
    pthread_mutex_unlock(&g_mu);      \
    return rc_;                       \
  }
#define UNLOCK_RETURN(x)       \
  do {                         \
    pthread_mutex_unlock(&g_mu); \
    return (x);                \
  } while (0)

// Filter::continueStatus: always posted to the dispatcher (1.39, #44704).
EXPORT CAPIStatus envoyGoFilterHttpContinue(void* s, int status) {
  LOCKED_STATE(s);
  (void)f;
  pthread_mutex_unlock(&g_mu);
  event* e = xmalloc(sizeof *e);
  e->type = 0;
  e->st = (pstate*)s;
  e->status = status;
  post(e);
  return CAPIOK;
}

// Filter::sendLocalReply: arguments copied, then posted to the dispatcher.
EXPORT CAPIStatus envoyGoFilterHttpSendLocalReply(void* s, int response_code, void* body_text_data, int body_text_len,
                                                  void* headers, int headers_num, long long int grpc_status,
                                                  void* details_data, int details_len) {
  LOCKED_STATE(s);
  (void)f;
  pthread_mutex_unlock(&g_mu);
  event* e = xmalloc(sizeof *e);
  e->type = 1;
  e->st = (pstate*)s;
  e->code = response_code;
  e->grpc = grpc_status;
  str_set(&e->body, body_text_data, (size_t)body_text_len);
  str_set(&e->details, details_data, (size_t)details_len);
  GoString* hs = headers;
  for (int i = 0; i + 1 < headers_num; i += 2)
    if (hs[i + 1].n > 0) hmap_add(&e->headers, hs[i].p, (size_t)hs[i].n, hs[i + 1].p, (size_t)hs[i + 1].n);
  post(e);
  return CAPIOK;
}

// Filter::sendPanicReply: golang.panic_error, then a 500 with empty details.
static _Atomic uint64_t panic_errors;
EXPORT CAPIStatus envoyGoFilterHttpSendPanicReply(void* s, void* details_data, int details_len) {
  atomic_fetch_add(&panic_errors, 1);
  str o = {0};
  httpRequest* r = ((pstate*)s)->s.req;
  str_puts(&o, "log\terror\t[go_plugin_http][");
  str_esc(&o, r->plugin_name.data, r->plugin_name.len);
  str_puts(&o, "] filter paniced with error details: ");
  str_esc(&o, details_data, (size_t)details_len);
  out_line(&o);
  free(o.p);
  return envoyGoFilterHttpSendLocalReply(s, 500, "error happened in filter\r\n", 26, NULL, 0, 0, "", 0);
}

EXPORT CAPIStatus envoyGoFilterHttpAddData(void* s, void* data, int data_len, bool is_streaming) {
  LOCKED_STATE(s);
  (void)data, (void)data_len, (void)is_streaming;
  note(f, "add_data_ignored");
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpInjectData(void* s, void* data, int data_len) {
  LOCKED_STATE(s);
  (void)data, (void)data_len;
  note(f, "inject_data_ignored");
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getHeader: the first value, pointing into the map; nothing when absent.
EXPORT CAPIStatus envoyGoFilterHttpGetHeader(void* s, void* key_data, int key_len, uint64_t* value_data,
                                             int* value_len) {
  LOCKED_STATE(s);
  (void)f;
  hmap* m = ((pstate*)s)->headers;
  if (!m) UNLOCK_RETURN(CAPIInvalidPhase);
  hdr* e = hmap_get(m, key_data, (size_t)key_len);
  if (e) {
    *value_data = (uint64_t)(uintptr_t)e->v.p;
    *value_len = (int)e->v.n;
  }
  UNLOCK_RETURN(CAPIOK);
}

// The header and trailer maps are handled alike; a map that does not exist yet is a call in the
// wrong phase, as in Envoy.
static CAPIStatus copy_headers(hmap* m, void* strs, void* buf) {
  if (!m) return CAPIInvalidPhase;
  hmap_to_go(m, strs, buf);
  return CAPIOK;
}

static CAPIStatus remove_header(hmap* m, void* key_data, int key_len) {
  if (!m) return CAPIInvalidPhase;
  hmap_remove(m, key_data, (size_t)key_len);
  return CAPIOK;
}

EXPORT CAPIStatus envoyGoFilterHttpCopyHeaders(void* s, void* strs, void* buf) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(copy_headers(((pstate*)s)->headers, strs, buf));
}

static CAPIStatus set_header(hmap* m, void* key_data, int key_len, void* value_data, int value_len, headerAction act) {
  if (!m) return CAPIInvalidPhase;
  if (act == HeaderSet) hmap_remove(m, key_data, (size_t)key_len); // setCopy = remove + addCopy
  else if (act != HeaderAdd) die("unknown header action: %d", act);
  hmap_add(m, key_data, (size_t)key_len, value_data, (size_t)value_len);
  return CAPIOK;
}

// Filter::setHeader / removeHeader: applied at once on the worker thread. (Off the worker thread
// Envoy posts the write; this host applies it under its lock instead.)
EXPORT CAPIStatus envoyGoFilterHttpSetHeaderHelper(void* s, void* key_data, int key_len, void* value_data,
                                                   int value_len, headerAction act) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(set_header(((pstate*)s)->headers, key_data, key_len, value_data, value_len, act));
}

EXPORT CAPIStatus envoyGoFilterHttpRemoveHeader(void* s, void* key_data, int key_len) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(remove_header(((pstate*)s)->headers, key_data, key_len));
}

// Buffers: the uint64 Go holds is the host's buffer* (Envoy: a Buffer::Instance*).
EXPORT CAPIStatus envoyGoFilterHttpGetBuffer(void* s, uint64_t buffer_ptr, void* data) {
  LOCKED_STATE(s);
  (void)f;
  buffer* b = (buffer*)(uintptr_t)buffer_ptr;
  memcpy(data, b->d, b->n);
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpDrainBuffer(void* s, uint64_t buffer_ptr, uint64_t length) {
  LOCKED_STATE(s);
  (void)f;
  buffer* b = (buffer*)(uintptr_t)buffer_ptr;
  if (length > b->n) length = b->n;
  memmove(b->d, b->d + length, b->n - length);
  b->n -= length;
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpSetBufferHelper(void* s, uint64_t buffer_ptr, void* data, int length,
                                                   bufferAction action) {
  LOCKED_STATE(s);
  (void)f;
  buffer* b = (buffer*)(uintptr_t)buffer_ptr;
  size_t n = (size_t)length;
  char* d;
  switch (action) {
  case Set:
    d = xmalloc(n);
    memcpy(d, data, n);
    free(b->d);
    b->d = d;
    b->n = n;
    break;
  case Append:
    d = xmalloc(b->n + n);
    memcpy(d, b->d, b->n);
    memcpy(d + b->n, data, n);
    free(b->d);
    b->d = d;
    b->n += n;
    break;
  case Prepend:
    d = xmalloc(b->n + n);
    memcpy(d, data, n);
    memcpy(d + n, b->d, b->n);
    free(b->d);
    b->d = d;
    b->n += n;
    break;
  default:
    die("unknown buffer action: %d", action);
  }
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpCopyTrailers(void* s, void* strs, void* buf) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(copy_headers(((pstate*)s)->trailers, strs, buf));
}

EXPORT CAPIStatus envoyGoFilterHttpSetTrailer(void* s, void* key_data, int key_len, void* value, int value_len,
                                              headerAction act) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(set_header(((pstate*)s)->trailers, key_data, key_len, value, value_len, act));
}

EXPORT CAPIStatus envoyGoFilterHttpRemoveTrailer(void* s, void* key_data, int key_len) {
  LOCKED_STATE(s);
  (void)f;
  UNLOCK_RETURN(remove_header(((pstate*)s)->trailers, key_data, key_len));
}

EXPORT CAPIStatus envoyGoFilterHttpSetUpstreamOverrideHost(void* s, void* host_data, int host_len, bool strict) {
  LOCKED_STATE(s);
  (void)host_data, (void)host_len, (void)strict;
  note(f, "upstream_override_host_ignored");
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpClearRouteCache(void* r, bool refresh) {
  LOCKED_REQ(r);
  note(f, refresh ? "refresh_route_cache" : "clear_route_cache");
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getStringValue
EXPORT CAPIStatus envoyGoFilterHttpGetStringValue(void* r, int id, uint64_t* value_data, int* value_len) {
  LOCKED_REQ(r);
  const str* v = NULL;
  str tmp = {0};
  switch (id) {
  case ValueRouteName: v = &f->route_name; break;
  case ValueFilterChainName: v = &tmp; break;
  case ValueResponseCodeDetails:
    if (!f->has_details) UNLOCK_RETURN(CAPIValueNotFound);
    v = &f->response_details;
    break;
  case ValueDownstreamLocalAddress: v = &f->dst; break;
  case ValueDownstreamRemoteAddress: v = &f->src; break;
  case ValueUpstreamLocalAddress:
  case ValueUpstreamRemoteAddress:
  case ValueUpstreamClusterName:
  case ValueVirtualClusterName: UNLOCK_RETURN(CAPIValueNotFound); // no upstream, no virtual cluster
  case ValueSslUriSanPeerCertificate:
    if (!f->ssl) UNLOCK_RETURN(CAPIValueNotFound);
    v = &f->sans;
    break;
  case ValueSslTlsVersion:
    if (!f->ssl) UNLOCK_RETURN(CAPIValueNotFound);
    str_puts(&tmp, "TLSv1.3");
    v = &tmp;
    break;
  default:
    if (id >= ValueSslSha256PeerCertificateDigest && id <= ValueSslDnsSansLocalCertificate) {
      if (!f->ssl) UNLOCK_RETURN(CAPIValueNotFound);
      v = &tmp; // a certificate without these fields
      break;
    }
    die("invalid string value id: %d", id);
  }
  set_str_value(f, v->p, v->n, value_data, value_len);
  free(tmp.p);
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getIntegerValue
EXPORT CAPIStatus envoyGoFilterHttpGetIntegerValue(void* r, int id, uint64_t* value) {
  LOCKED_REQ(r);
  switch (id) {
  case ValueProtocol: *value = (uint64_t)f->protocol; break;
  case ValueResponseCode:
    if (!f->response_code) UNLOCK_RETURN(CAPIValueNotFound);
    *value = (uint64_t)f->response_code;
    break;
  case ValueAttemptCount: UNLOCK_RETURN(CAPIValueNotFound); // set by the router only
  case ValueSslConnectionExists: *value = f->ssl ? 1 : 0; break;
  case ValueSslPeerCertificatePresented:
  case ValueSslPeerCertificateValidated:
    if (!f->ssl) UNLOCK_RETURN(CAPIValueNotFound);
    *value = 1;
    break;
  case ValueSslCiphersuiteId:
  case ValueSslValidFromPeerCertificate:
  case ValueSslExpirationPeerCertificate: UNLOCK_RETURN(CAPIValueNotFound);
  default: die("invalid integer value id: %d", id);
  }
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getDynamicMetadata: the filter's serialized google.protobuf.Struct, if any.
EXPORT CAPIStatus envoyGoFilterHttpGetDynamicMetadata(void* r, void* name_data, int name_len, uint64_t* value_data,
                                                      int* value_len) {
  LOCKED_REQ(r);
  hdr* e = hmap_get(&f->dyn_md, name_data, (size_t)name_len);
  if (e) set_str_value(f, e->v.p, e->v.n, value_data, value_len);
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpSetDynamicMetadata(void* r, void* name_data, int name_len, void* key_data,
                                                      int key_len, void* buf_data, int buf_len) {
  LOCKED_REQ(r);
  (void)name_data, (void)name_len, (void)key_data, (void)key_len, (void)buf_data, (void)buf_len;
  note(f, "set_dynamic_metadata_ignored");
  UNLOCK_RETURN(CAPIOK);
}

// envoyGoFilterHttpFinalize: Go's request finalizer; the HttpRequestInternal is deleted.
EXPORT void envoyGoFilterHttpFinalize(void* r, int reason) {
  (void)reason;
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  if (q->f) q->f->req = NULL; // a filter still alive no longer owns it (deferredDeleteRequest)
  pthread_mutex_unlock(&g_mu);
  free(q->strValue.p);
  free(q);
  atomic_fetch_sub(&live_requests, 1);
}

// envoyGoConfigHttpFinalize: Go's config finalizer; the httpConfigInternal is deleted.
EXPORT void envoyGoConfigHttpFinalize(void* c) {
  hconfig* hc = c;
  pthread_mutex_lock(&g_mu);
  if (hc->fc) hc->fc->hc = NULL;
  pthread_mutex_unlock(&g_mu);
  free(hc);
  atomic_fetch_sub(&live_http_configs, 1);
}

// Filter::setStringFilterState: a StringAccessor (state type ignored, as Envoy does).
EXPORT CAPIStatus envoyGoFilterHttpSetStringFilterState(void* r, void* key_data, int key_len, void* value_data,
                                                        int value_len, int state_type, int life_span,
                                                        int stream_sharing) {
  (void)state_type, (void)life_span, (void)stream_sharing;
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  filter* f = q->f;
  if (!f) UNLOCK_RETURN(CAPIFilterIsGone);
  if (f->destroyed) UNLOCK_RETURN(CAPIFilterIsDestroy);
  hmap_remove(&f->filter_state, key_data, (size_t)key_len);
  hmap_add(&f->filter_state, key_data, (size_t)key_len, value_data, (size_t)value_len);
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getStringFilterState: only string objects are visible; nothing when absent. (Off the
// worker thread Envoy posts the read and returns CAPIYield; this host answers under its lock.)
EXPORT CAPIStatus envoyGoFilterHttpGetStringFilterState(void* r, void* key_data, int key_len, uint64_t* value_data,
                                                        int* value_len) {
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  filter* f = q->f;
  if (!f) UNLOCK_RETURN(CAPIFilterIsGone);
  if (f->destroyed) UNLOCK_RETURN(CAPIFilterIsDestroy);
  hdr* e = hmap_get(&f->filter_state, key_data, (size_t)key_len);
  if (e) set_str_value(f, e->v.p, e->v.n, value_data, value_len);
  UNLOCK_RETURN(CAPIOK);
}

// Filter::getStringProperty over the attributes this host knows; others are not found.
static CAPIStatus property(filter* f, const char* path, size_t n, str* out) {
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(path, lit, n) == 0)
  hdr* e;
  if (IS("request.method") || IS("request.path") || IS("request.host") || IS("request.scheme")) {
    const char* h = IS("request.method") ? ":method" : IS("request.path") ? ":path" : IS("request.host") ? ":authority" : ":scheme";
    if (!(e = hmap_get(&f->req_headers, h, strlen(h)))) return CAPIValueNotFound;
    str_set(out, e->v.p, e->v.n);
    return CAPIOK;
  }
  if (IS("request.url_path")) {
    if (!(e = hmap_get(&f->req_headers, ":path", 5))) return CAPIValueNotFound;
    char* q = memchr(e->v.p, '?', e->v.n);
    str_set(out, e->v.p, q ? (size_t)(q - e->v.p) : e->v.n);
    return CAPIOK;
  }
  if (IS("request.headers") || IS("response.headers")) return CAPISerializationFailure; // a map
  if (IS("request.protocol")) {
    static const char* names[] = {"HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"};
    str_puts(out, names[f->protocol & 3]);
    return CAPIOK;
  }
  if (IS("source.address") || IS("destination.address")) {
    const str* a = IS("source.address") ? &f->src : &f->dst;
    if (!a->n) return CAPIValueNotFound;
    str_set(out, a->p, a->n);
    return CAPIOK;
  }
  if (IS("source.port") || IS("destination.port")) {
    const str* a = IS("source.port") ? &f->src : &f->dst;
    char* c = a->n ? strrchr(a->p, ':') : NULL;
    if (!c) return CAPIValueNotFound;
    str_puts(out, c + 1);
    return CAPIOK;
  }
  if (IS("connection.mtls")) {
    str_puts(out, f->ssl ? "true" : "false");
    return CAPIOK;
  }
  if (IS("connection.requested_server_name")) {
    str_set(out, f->sni.p, f->sni.n);
    return CAPIOK;
  }
  if (IS("connection.uri_san_peer_certificate")) { // the first SAN only
    if (!f->ssl || !f->sans.n) return CAPIValueNotFound;
    str_puts(out, f->sans.p); // NUL-separated: the first
    return CAPIOK;
  }
  if (IS("xds.route_name")) {
    str_set(out, f->route_name.p, f->route_name.n);
    return CAPIOK;
  }
  if (IS("response.code")) {
    if (!f->response_code) return CAPIValueNotFound;
    char b[16];
    snprintf(b, sizeof b, "%d", f->response_code);
    str_puts(out, b);
    return CAPIOK;
  }
  if (IS("response.code_details")) {
    if (!f->has_details) return CAPIValueNotFound;
    str_set(out, f->response_details.p, f->response_details.n);
    return CAPIOK;
  }
  return CAPIValueNotFound;
#undef IS
}

EXPORT CAPIStatus envoyGoFilterHttpGetStringProperty(void* r, void* key_data, int key_len, uint64_t* value_data,
                                                     int* value_len, int* rc) {
  (void)rc; // only written on the posted (CAPIYield) path, which this host does not take
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  filter* f = q->f;
  if (!f) UNLOCK_RETURN(CAPIFilterIsGone);
  if (f->destroyed) UNLOCK_RETURN(CAPIFilterIsDestroy);
  str v = {0};
  CAPIStatus st = property(f, key_data, (size_t)key_len, &v);
  if (st == CAPIOK) set_str_value(f, v.p ? v.p : "", v.n, value_data, value_len);
  free(v.p);
  UNLOCK_RETURN(st);
}

// Filter::getSecret: no generic_secrets are configured here: not found (len -1).
EXPORT CAPIStatus envoyGoFilterHttpGetStringSecret(void* r, void* key_data, int key_len, uint64_t* value_data,
                                                   int* value_len) {
  (void)key_data, (void)key_len, (void)value_data;
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  if (!q->f) UNLOCK_RETURN(CAPIFilterIsGone);
  if (q->f->destroyed) UNLOCK_RETURN(CAPIFilterIsDestroy);
  *value_len = -1;
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpSetDrainConnectionUponCompletion(void* r) {
  reqint* q = r;
  pthread_mutex_lock(&g_mu);
  if (!q->f) UNLOCK_RETURN(CAPIFilterIsGone);
  if (q->f->destroyed) UNLOCK_RETURN(CAPIFilterIsDestroy);
  q->f->drain = true;
  UNLOCK_RETURN(CAPIOK);
}

// contrib/golang/common/log/cgo.cc: spdlog levels trace..critical, off = nothing.
static const char* level_names[] = {"trace", "debug", "info", "warning", "error", "critical"};
static _Thread_local filter* logging_filter; // the filter whose Go call is running on this thread

EXPORT void envoyGoFilterLog(uint32_t level, void* message_data, int message_len) {
  if (level == 6) return; // off
  if (level > 6) die("undefined log level %u", level);
  if ((int)level < atomic_load(&log_level)) return;
  str o = {0};
  str_puts(&o, "log\t");
  str_puts(&o, level_names[level]);
  str_puts(&o, "\t");
  str_esc(&o, message_data, (size_t)message_len);
  out_line(&o);
  // The SDK's fail-open trap: filtermanager.go logs this for an unregistered plugin_name and
  // hands the request to a pass-through filter. Envoy shows it only as this log line.
  filter* f = logging_filter;
  if (f && level == 4) {
    str want = {0};
    str_puts(&want, "plugin ");
    str_puts(&want, f->fc->plugin);
    str_puts(&want, " not found, pass through by default");
    if ((size_t)message_len == want.n && memcmp(message_data, want.p, want.n) == 0) f->unregistered = true;
    free(want.p);
  }
  free(o.p);
}

EXPORT uint32_t envoyGoFilterLogLevel(void) { return (uint32_t)atomic_load(&log_level); }

// envoyGoConfigHandlerWrapper + FilterConfig::*Metric
static CAPIStatus config_of(void* c, fconfig** out) {
  hconfig* hc = c;
  if (!hc->fc) return CAPIFilterIsGone;
  *out = hc->fc;
  return CAPIOK;
}

EXPORT CAPIStatus envoyGoFilterHttpDefineMetric(void* c, uint32_t metric_type, void* name_data, int name_len,
                                                uint32_t* metric_id) {
  pthread_mutex_lock(&g_mu);
  fconfig* fc;
  CAPIStatus st = config_of(c, &fc);
  if (st != CAPIOK) UNLOCK_RETURN(st);
  if (metric_type > MetricHistogram) UNLOCK_RETURN(CAPIValueNotFound);
  int idx = -1;
  for (int i = 0; i < n_metrics; i++)
    if (metrics[i].type == (int)metric_type && strlen(metrics[i].name) == (size_t)name_len &&
        memcmp(metrics[i].name, name_data, (size_t)name_len) == 0)
      idx = i;
  if (idx < 0) {
    if (n_metrics == cap_metrics) {
      cap_metrics = cap_metrics ? cap_metrics * 2 : 16;
      metrics = realloc(metrics, cap_metrics * sizeof *metrics);
      if (!metrics) die("out of memory");
    }
    idx = n_metrics++;
    metrics[idx].type = (int)metric_type;
    metrics[idx].name = xstrndup(name_data, (size_t)name_len);
    atomic_store(&metrics[idx].value, 0);
  }
  uint32_t id = fc->next_id[metric_type] += 4; // kMetricIdIncrement; low 2 bits = type
  fc->ids = realloc(fc->ids, (fc->n_ids + 1) * sizeof *fc->ids);
  if (!fc->ids) die("out of memory");
  fc->ids[fc->n_ids].id = id;
  fc->ids[fc->n_ids].idx = idx;
  fc->n_ids++;
  *metric_id = id;
  UNLOCK_RETURN(CAPIOK);
}

static metric* metric_of(fconfig* fc, uint32_t id) {
  for (int i = 0; i < fc->n_ids; i++)
    if (fc->ids[i].id == id) return &metrics[fc->ids[i].idx];
  return NULL;
}

EXPORT CAPIStatus envoyGoFilterHttpIncrementMetric(void* c, uint32_t metric_id, int64_t offset) {
  pthread_mutex_lock(&g_mu);
  fconfig* fc;
  CAPIStatus st = config_of(c, &fc);
  if (st != CAPIOK) UNLOCK_RETURN(st);
  metric* m = metric_of(fc, metric_id);
  if (m && m->type == MetricCounter && offset > 0) m->value += (uint64_t)offset; // counters only go up
  if (m && m->type == MetricGauge) m->value += (uint64_t)offset;                 // add or sub
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpGetMetric(void* c, uint32_t metric_id, uint64_t* value) {
  pthread_mutex_lock(&g_mu);
  fconfig* fc;
  CAPIStatus st = config_of(c, &fc);
  if (st != CAPIOK) UNLOCK_RETURN(st);
  metric* m = metric_of(fc, metric_id);
  if (m && m->type != MetricHistogram) *value = m->value;
  UNLOCK_RETURN(CAPIOK);
}

EXPORT CAPIStatus envoyGoFilterHttpRecordMetric(void* c, uint32_t metric_id, uint64_t value) {
  pthread_mutex_lock(&g_mu);
  fconfig* fc;
  CAPIStatus st = config_of(c, &fc);
  if (st != CAPIOK) UNLOCK_RETURN(st);
  metric* m = metric_of(fc, metric_id);
  if (m && m->type == MetricCounter) m->value += value;
  if (m && m->type == MetricGauge) m->value = value;
  UNLOCK_RETURN(CAPIOK); // histograms: recorded nowhere
}

// ---- driving a request in Envoy's order (golang_filter.cc Filter::decodeHeaders ... onDestroy) ---

static uint64_t call_go_header(filter* f, pstate* st, hmap* m, bool end_stream, int state) {
  st->s.state = state;
  st->end = end_stream;
  logging_filter = f;
  uint64_t r = go_on_header(&st->s, end_stream ? 1 : 0, (uint64_t)m->n, m->bytes);
  logging_filter = NULL;
  return r;
}

static uint64_t call_go_data(filter* f, pstate* st, buffer* b, bool end_stream) {
  st->s.state = ProcessingData;
  st->end = end_stream;
  logging_filter = f;
  uint64_t r = go_on_data(&st->s, end_stream ? 1 : 0, (uint64_t)(uintptr_t)b, b->n);
  logging_filter = NULL;
  return r;
}

// after: ProcessorState::handle*GolangStatus. Returns true when the phase is done (continue).
static bool handle_status(pstate* st, uint64_t status, bool end_stream) {
  switch ((int)status) {
  case Continue: st->s.state = end_stream ? Done : WaitingData; return true;
  case LocalReply:
  case Running: return false; // state stays ProcessingX until a posted callback
  case StopAndBuffer: st->s.state = WaitingAllData; return false;
  case StopAndBufferWatermark: st->s.state = WaitingData; return false;
  default: return false; // Envoy logs "unexpected status"
  }
}

static void send_local_reply(filter* f, event* e);

// run_dispatcher runs the callbacks Go posted while it ran (Envoy runs them on its next event
// loop turn, after the filter callback returned). With wait, it waits (bounded) for one first.
static bool run_dispatcher(filter* f, bool wait) {
  pthread_mutex_lock(&g_mu);
  if (wait && q_n == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    while (q_n == 0)
      if (pthread_cond_timedwait(&q_cond, &g_mu, &ts) == ETIMEDOUT) break;
  }
  bool any = q_n > 0;
  while (q_n > 0) {
    event* e = queue[0];
    memmove(queue, queue + 1, (size_t)(q_n - 1) * sizeof *queue);
    q_n--;
    pthread_mutex_unlock(&g_mu);
    pstate* st = e->st;
    if (st->f == f && !f->destroyed) {
      if (e->type == 1) {
        send_local_reply(f, e);
      } else if (st->s.state == ProcessingHeader || st->s.state == ProcessingData || st->s.state == ProcessingTrailer) {
        handle_status(st, (uint64_t)e->status, st->end); // continueStatusInternal
      }
    }
    hmap_free(&e->headers);
    free(e->body.p);
    free(e->details.p);
    free(e);
    pthread_mutex_lock(&g_mu);
  }
  pthread_mutex_unlock(&g_mu);
  return any;
}

// Utility::prepareLocalReply + the encode path: the reply's headers (and body) go through the
// encoder filters, this Go filter included (FilterManager::sendLocalReplyViaFilterChain).
static void send_local_reply(filter* f, event* e) {
  if (f->replied) return; // a second reply after the response started is dropped
  pstate* st = e->st;
  if (st == &f->dec) st->s.state = WaitingHeader; // DecodingProcessorState::sendLocalReply
  f->replied = true;
  f->continued = false;
  f->reply_filter_code = e->code;
  f->reply_grpc = e->grpc;
  hmap* h = &f->resp_headers;
  hmap_free(h);
  char code[16];
  snprintf(code, sizeof code, "%d", f->grpc ? 200 : e->code);
  hmap_add(h, ":status", 7, code, strlen(code));
  for (int i = 0; i < e->headers.n; i++) // modify_headers: addCopy of each non-empty value
    hmap_add(h, e->headers.h[i].k.p, e->headers.h[i].k.n, e->headers.h[i].v.p, e->headers.h[i].v.n);
  str_set(&f->reply_body, e->body.p, e->body.n);
  if (f->grpc) {
    hmap_remove(h, "content-type", 12);
    hmap_add(h, "content-type", 12, "application/grpc", 16);
    if (!hmap_get(h, "grpc-status", 11)) {
      char g[24];
      snprintf(g, sizeof g, "%lld", e->grpc);
      hmap_add(h, "grpc-status", 11, g, strlen(g));
    }
    if (e->body.n) { // PercentEncoding::encode: bytes < ' ', >= '~' and '%'
      str m = {0};
      for (size_t i = 0; i < e->body.n; i++) {
        unsigned char c = (unsigned char)e->body.p[i];
        if (c < ' ' || c >= '~' || c == '%') {
          char b[4];
          snprintf(b, sizeof b, "%%%02X", c);
          str_put(&m, b, 3);
        } else {
          str_put(&m, (char*)&c, 1);
        }
      }
      hmap_remove(h, "grpc-message", 12);
      hmap_add(h, "grpc-message", 12, m.p, m.n);
      free(m.p);
    }
    hmap_remove(h, "content-length", 14);
    f->reply_body.n = 0; // trailers-only: no body
  } else if (e->body.n) {
    char len[24];
    snprintf(len, sizeof len, "%zu", e->body.n);
    hmap_remove(h, "content-length", 14);
    hmap_add(h, "content-length", 14, len, strlen(len));
    if (!hmap_get(h, "content-type", 12)) hmap_add(h, "content-type", 12, "text/plain", 10);
  } else {
    hmap_remove(h, "content-length", 14);
    hmap_remove(h, "content-type", 12);
  }
  f->reply_code = f->grpc ? 200 : e->code;
  f->response_code = f->reply_code;
  str_set(&f->response_details, e->details.p, e->details.n); // setResponseCodeDetails
  f->has_details = true;
  f->reply_body.p = f->reply_body.p ? f->reply_body.p : xstrndup("", 0);
  // the Go filter's EncodeHeaders (and EncodeData for a body) see the reply
  bool end = f->reply_body.n == 0;
  f->enc.headers = h;
  uint64_t s = call_go_header(f, &f->enc, h, end, ProcessingHeader);
  f->encode_header_status = (int)s;
  bool done = handle_status(&f->enc, s, end);
  f->enc.headers = NULL;
  if (done && !end) {
    buffer b = {xstrndup(f->reply_body.p, f->reply_body.n), f->reply_body.n};
    s = call_go_data(f, &f->enc, &b, true);
    f->encode_data_status = (int)s;
    handle_status(&f->enc, s, true);
    free(b.d);
  }
}

static filter* new_filter(fconfig* fc, rconfig* rc) {
  filter* f = xmalloc(sizeof *f);
  reqint* q = xmalloc(sizeof *q);
  atomic_fetch_add(&live_requests, 1);
  q->f = f;
  q->r.plugin_name.data = fc->plugin;
  q->r.plugin_name.len = strlen(fc->plugin);
  q->r.worker_id = 0;
  f->req = q;
  f->dec.s.req = &q->r;
  f->dec.s.is_encoding = 0;
  f->dec.f = f;
  f->enc.s.req = &q->r;
  f->enc.s.is_encoding = 1;
  f->enc.f = f;
  f->fc = fc;
  fc->refs++;
  f->rc = rc;
  if (rc) rc->refs++;
  f->protocol = 1; // HTTP/1.1
  f->header_status = f->data_status = f->trailer_status = f->encode_header_status = f->encode_data_status = -1;
  str_put(&f->src, "", 0);
  str_put(&f->dst, "", 0);
  str_put(&f->sni, "", 0);
  str_put(&f->route_name, "", 0);
  str_put(&f->sans, "", 0);
  str_put(&f->notes, "", 0);
  return f;
}

// Filter::decodeHeaders (initRequest: the merged config id, then the Go call). A phase that
// returned Running waits (bounded) for the Continue or SendLocalReply Go posts from its goroutine.
static void decode_headers(filter* f) {
  hdr* ct = hmap_get(&f->req_headers, "content-type", 12);
  f->grpc = ct && hmap_get(&f->req_headers, ":path", 5) && ct->v.n >= 16 && memcmp(ct->v.p, "application/grpc", 16) == 0 &&
            (ct->v.n == 16 || ct->v.p[16] == '+');
  f->req->r.configId = f->rc ? merged_id(f->rc, f->fc) : f->fc->id;
  bool end = f->body.n == 0 && f->req_trailers.n == 0;
  f->dec.headers = &f->req_headers;
  uint64_t s = call_go_header(f, &f->dec, &f->req_headers, end, ProcessingHeader);
  f->header_status = (int)s;
  handle_status(&f->dec, s, end);
  run_dispatcher(f, false);
  if (s == Running && f->dec.s.state == ProcessingHeader && !f->replied) run_dispatcher(f, true);
  if (f->dec.s.state != ProcessingHeader) f->dec.headers = NULL; // doHeaders: done
}

// data, then trailers, as doData / doTrailer deliver them in the state the headers left.
static void decode_rest(filter* f) {
  if (f->replied) return;
  if (f->body.n && (f->dec.s.state == WaitingData || f->dec.s.state == WaitingAllData)) {
    bool end = f->req_trailers.n == 0;
    buffer b = {xstrndup(f->body.p, f->body.n), f->body.n};
    uint64_t s = call_go_data(f, &f->dec, &b, end);
    f->data_status = (int)s;
    handle_status(&f->dec, s, end);
    run_dispatcher(f, false);
    if (s == Running && f->dec.s.state == ProcessingData && !f->replied) run_dispatcher(f, true);
    str_set(&f->body, b.d, b.n); // what goes upstream (doDataList moved out)
    free(b.d);
  }
  if (f->req_trailers.n && !f->replied && (f->dec.s.state == WaitingData || f->dec.s.state == WaitingTrailer)) {
    f->dec.trailers = &f->req_trailers;
    uint64_t s = call_go_header(f, &f->dec, &f->req_trailers, true, ProcessingTrailer);
    f->trailer_status = (int)s;
    handle_status(&f->dec, s, true);
    run_dispatcher(f, false);
    if (s == Running && f->dec.s.state == ProcessingTrailer && !f->replied) run_dispatcher(f, true);
    if (f->dec.s.state != ProcessingTrailer) f->dec.trailers = NULL;
  }
}

// continued: every decoding phase went on (the stream would be routed upstream).
static void settle(filter* f) { f->continued = !f->replied && f->dec.s.state == Done; }

// onStreamComplete, log(DownstreamEnd), onDestroy: ConnectionManagerImpl's deferred destroy order.
static int finish_filter(filter* f) {
  reqint* q = f->req;
  if (f->req->r.configId == 0) { // never reached Go: Envoy deletes the request itself
    atomic_fetch_sub(&live_requests, 1);
    free(q);
    f->req = NULL;
  } else {
    atomic_store(&q->r.is_golang_processing_log, 1);
    logging_filter = f;
    go_on_stream_complete(&q->r);
    f->dec.headers = &f->req_headers; // log() hands Go the maps it may read
    f->dec.trailers = f->req_trailers.n ? &f->req_trailers : NULL;
    f->enc.headers = f->resp_headers.n ? &f->resp_headers : NULL;
    go_on_log(&q->r, AccessLogDownstreamEnd, &f->dec.s, &f->enc.s, (uint64_t)f->req_headers.n, f->req_headers.bytes,
              (uint64_t)f->req_trailers.n, f->req_trailers.bytes, (uint64_t)f->resp_headers.n, f->resp_headers.bytes, 0, 0);
    atomic_store(&q->r.is_golang_processing_log, 0);
    f->dec.headers = f->dec.trailers = f->enc.headers = NULL;
    int reason = (processing_in_go(&f->dec) || processing_in_go(&f->enc)) ? DestroyTerminate : DestroyNormal;
    go_on_destroy(&q->r, (uint64_t)reason);
    logging_filter = NULL;
    pthread_mutex_lock(&g_mu);
    f->destroyed = true;
    if (f->req) f->req->f = NULL; // the weak pointer expires
    pthread_mutex_unlock(&g_mu);
    run_dispatcher(f, false); // drop anything posted for the destroyed filter
    return reason;
  }
  pthread_mutex_lock(&g_mu);
  f->destroyed = true;
  pthread_mutex_unlock(&g_mu);
  return DestroyNormal;
}

static void free_filter(filter* f) {
  fconfig_unref(f->fc);
  if (f->rc) rconfig_unref(f->rc);
  hmap_free(&f->req_headers);
  hmap_free(&f->req_trailers);
  hmap_free(&f->resp_headers);
  hmap_free(&f->filter_state);
  hmap_free(&f->dyn_md);
  hmap_free(&f->reply_headers);
  free(f->body.p);
  free(f->src.p);
  free(f->dst.p);
  free(f->sni.p);
  free(f->route_name.p);
  free(f->sans.p);
  free(f->response_details.p);
  free(f->reply_body.p);
  free(f->notes.p);
  free(f);
}

// parse_request reads the request's fields (key=value, %XX-escaped) into a new filter.
static filter* parse_request(char** fields, int n, str* err) {
  fconfig* fc = NULL;
  rconfig* rc = NULL;
  for (int i = 0; i < n; i++) {
    if (strncmp(fields[i], "cfg=", 4) == 0) {
      int s = slot((void**)fconfigs, fields[i] + 4);
      if (s >= 0) fc = fconfigs[s];
    } else if (strncmp(fields[i], "route=", 6) == 0) {
      int s = slot((void**)rconfigs, fields[i] + 6);
      if (s >= 0) rc = rconfigs[s];
      else str_puts(err, "unknown route config");
    }
  }
  if (!fc) {
    str_puts(err, "no such filter config");
    return NULL;
  }
  if (err->n) return NULL;
  filter* f = new_filter(fc, rc);
  for (int i = 0; i < n; i++) {
    char* eq = strchr(fields[i], '=');
    if (!eq) continue;
    *eq = 0;
    char* k = fields[i];
    char* v = eq + 1;
    if (strcmp(k, "h") == 0 || strcmp(k, "trailer") == 0) {
      char* c = strchr(v + (v[0] == ':'), ':'); // pseudo-headers start with ':'
      if (!c) continue;
      *c = 0;
      size_t kl = unesc(v), vl = unesc(c + 1);
      hmap_add(strcmp(k, "h") == 0 ? &f->req_headers : &f->req_trailers, v, kl, c + 1, vl);
    } else if (strcmp(k, "fs") == 0 || strcmp(k, "md") == 0) {
      char* c = strchr(v, '=');
      if (!c) continue;
      *c = 0;
      size_t kl = unesc(v);
      if (strcmp(k, "fs") == 0) {
        size_t vl = unesc(c + 1);
        hmap_add(&f->filter_state, v, kl, c + 1, vl);
      } else { // hex of a serialized google.protobuf.Struct
        str b = {0};
        str_put(&b, "", 0);
        for (char* h = c + 1; hexval(h[0]) >= 0 && hexval(h[1]) >= 0; h += 2) {
          char byte = (char)(hexval(h[0]) * 16 + hexval(h[1]));
          str_put(&b, &byte, 1);
        }
        hmap_add(&f->dyn_md, v, kl, b.p, b.n);
        free(b.p);
      }
    } else if (strcmp(k, "src") == 0) {
      str_set(&f->src, v, unesc(v));
    } else if (strcmp(k, "dst") == 0) {
      str_set(&f->dst, v, unesc(v));
    } else if (strcmp(k, "sni") == 0) {
      str_set(&f->sni, v, unesc(v));
    } else if (strcmp(k, "routename") == 0) {
      str_set(&f->route_name, v, unesc(v));
    } else if (strcmp(k, "san") == 0) {
      if (f->ssl) str_put(&f->sans, "", 1); // '\0' separator
      f->ssl = true;
      str_put(&f->sans, v, unesc(v));
    } else if (strcmp(k, "body") == 0) {
      str_set(&f->body, v, unesc(v));
    } else if (strcmp(k, "show") == 0) {
      f->show = true;
    } else if (strcmp(k, "proto") == 0) {
      f->protocol = atoi(v);
    }
    *eq = '=';
  }
  return f;
}

static void result_line(const char* id, filter* f, int reason) {
  str o = {0};
  char b[128];
  str_puts(&o, "result\t");
  str_puts(&o, id);
  if (f->replied) {
    snprintf(b, sizeof b, "\tlocal_reply\tstatus=%d\tfilter_code=%d\tgrpc=%lld", f->reply_code, f->reply_filter_code,
             f->reply_grpc);
    str_puts(&o, b);
    str_puts(&o, "\tbody=");
    str_esc(&o, f->reply_body.p, f->reply_body.n);
    str_puts(&o, "\tdetails=");
    str_esc(&o, f->response_details.p, f->response_details.n);
    for (int i = 0; i < f->resp_headers.n; i++) {
      str_puts(&o, "\th=");
      str_esc(&o, f->resp_headers.h[i].k.p, f->resp_headers.h[i].k.n);
      str_puts(&o, ":");
      str_esc(&o, f->resp_headers.h[i].v.p, f->resp_headers.h[i].v.n);
    }
  } else if (f->continued) {
    str_puts(&o, "\tcontinued");
    for (int i = 0; f->show && i < f->req_headers.n; i++) { // the request as it would go upstream
      str_puts(&o, "\tuh=");
      str_esc(&o, f->req_headers.h[i].k.p, f->req_headers.h[i].k.n);
      str_puts(&o, ":");
      str_esc(&o, f->req_headers.h[i].v.p, f->req_headers.h[i].v.n);
    }
    if (f->show && f->body.n) {
      str_puts(&o, "\tubody=");
      str_esc(&o, f->body.p, f->body.n);
    }
  } else {
    str_puts(&o, "\tstopped"); // Go neither continued nor replied (Envoy would hang the stream)
  }
  snprintf(b, sizeof b, "\tgo_status=%d,%d,%d,%d,%d\tdestroy=%d", f->header_status, f->data_status,
           f->trailer_status, f->encode_header_status, f->encode_data_status, reason);
  str_puts(&o, b);
  if (f->unregistered) str_puts(&o, "\tunregistered_plugin");
  if (f->notes.n) {
    str_puts(&o, "\tnotes=");
    str_puts(&o, f->notes.p);
  }
  out_line(&o);
  free(o.p);
}

// in-flight streams: opened, not yet finished
#define MAXOPEN 256
static struct {
  char* id;
  filter* f;
} open_streams[MAXOPEN];

static void cmd_open(char* id, char** fields, int n, bool finish) {
  str err = {0};
  filter* f = parse_request(fields, n, &err);
  if (!f) {
    str o = {0};
    str_puts(&o, "error\t");
    str_puts(&o, id);
    str_puts(&o, "\t");
    str_puts(&o, err.p);
    out_line(&o);
    free(o.p);
    free(err.p);
    return;
  }
  decode_headers(f);
  decode_rest(f);
  settle(f);
  if (finish) {
    int reason = finish_filter(f);
    result_line(id, f, reason);
    free_filter(f);
    return;
  }
  for (int i = 0; i < MAXOPEN; i++) {
    if (!open_streams[i].f) {
      open_streams[i].id = strdup(id);
      open_streams[i].f = f;
      str o = {0};
      str_puts(&o, "open\t");
      str_puts(&o, id);
      out_line(&o);
      free(o.p);
      return;
    }
  }
  die("too many open streams");
}

static void cmd_finish(char* id) {
  for (int i = 0; i < MAXOPEN; i++) {
    if (open_streams[i].f && strcmp(open_streams[i].id, id) == 0) {
      filter* f = open_streams[i].f;
      int reason = finish_filter(f);
      result_line(id, f, reason);
      free_filter(f);
      free(open_streams[i].id);
      open_streams[i].f = NULL;
      return;
    }
  }
  die("finish: no open stream %s", id);
}

// bench: the same request n times, timed here with CLOCK_MONOTONIC around the whole per-request
// sequence (headers, reply/encode, complete, log, destroy).
static void cmd_bench(long n, char** fields, int nf) {
  long cont = 0, replies = 0;
  struct timespec t0, t1;
  char** copy = xmalloc((size_t)nf * sizeof *copy);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < n; i++) {
    for (int j = 0; j < nf; j++) copy[j] = strdup(fields[j]); // parsing unescapes in place
    str err = {0};
    filter* f = parse_request(copy, nf, &err);
    if (!f) die("bench: %s", err.p);
    decode_headers(f);
    decode_rest(f);
    settle(f);
    finish_filter(f);
    cont += f->continued;
    replies += f->replied;
    free_filter(f);
    for (int j = 0; j < nf; j++) free(copy[j]);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  free(copy);
  long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
  str o = {0};
  char b[160];
  snprintf(b, sizeof b, "bench\tn=%ld\tns=%lld\tcontinued=%ld\tlocal_reply=%ld", n, ns, cont, replies);
  str_puts(&o, b);
  out_line(&o);
  free(o.p);
}

static void cmd_stats(void) {
  str o = {0};
  char b[64];
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < n_metrics; i++) {
    o.n = 0;
    static const char* types[] = {"counter", "gauge", "histogram"};
    str_puts(&o, "metric\t");
    str_puts(&o, types[metrics[i].type]);
    str_puts(&o, "\t");
    str_esc(&o, metrics[i].name, strlen(metrics[i].name));
    snprintf(b, sizeof b, "\t%llu", (unsigned long long)metrics[i].value);
    str_puts(&o, b);
    out_line(&o);
  }
  pthread_mutex_unlock(&g_mu);
  o.n = 0;
  snprintf(b, sizeof b, "metric\tcounter\tgolang.panic_error\t%llu", (unsigned long long)panic_errors);
  str_puts(&o, b);
  out_line(&o);
  o.n = 0;
  snprintf(b, sizeof b, "stats\tend\tlive_requests=%ld\tlive_http_configs=%ld", (long)live_requests,
           (long)live_http_configs);
  str_puts(&o, b);
  out_line(&o);
  free(o.p);
}

#define SYM(var, name)                                       \
  do {                                                       \
    *(void**)&var = dlsym(h, name);                          \
    if (!var) die("%s: no symbol %s: %s", path, name, dlerror()); \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: host path/to/filters.so < commands\n");
    return 2;
  }
  dispatcher = pthread_self();
  const char* env = getenv("HOST_LOG_LEVEL");
  if (env) atomic_store(&log_level, atoi(env));
  const char* path = argv[1];
  // Dso::DsoInstance: dlopen(RTLD_LAZY) — the Go runtime starts and api_impl's init() calls
  // envoyGoFilterLogLevel right here.
  // HOST_DLOPEN_NOW=1 binds every undefined symbol at load time: a check that this host
  // provides them all (Envoy itself loads lazily).
  void* h = dlopen(path, getenv("HOST_DLOPEN_NOW") ? RTLD_NOW : RTLD_LAZY);
  if (!h) die("dlopen %s: %s", path, dlerror());
  SYM(go_new_config, "envoyGoFilterNewHttpPluginConfig");
  SYM(go_merge_config, "envoyGoFilterMergeHttpPluginConfig");
  SYM(go_destroy_config, "envoyGoFilterDestroyHttpPluginConfig");
  SYM(go_on_header, "envoyGoFilterOnHttpHeader");
  SYM(go_on_data, "envoyGoFilterOnHttpData");
  SYM(go_on_log, "envoyGoFilterOnHttpLog");
  SYM(go_on_stream_complete, "envoyGoFilterOnHttpStreamComplete");
  SYM(go_on_destroy, "envoyGoFilterOnHttpDestroy");
  SYM(go_sema_dec, "envoyGoRequestSemaDec");
  str o = {0};
  str_puts(&o, "ready");
  out_line(&o);
  free(o.p);

  char* line = NULL;
  size_t cap = 0;
  ssize_t len;
  char* fields[256];
  while ((len = getline(&line, &cap, stdin)) > 0) {
    if (line[len - 1] == '\n') line[--len] = 0;
    int n = 0;
    for (char* p = line; p && n < 256;) {
      fields[n++] = p;
      p = strchr(p, '\t');
      if (p) *p++ = 0;
    }
    if (n == 0 || fields[0][0] == 0 || fields[0][0] == '#') continue;
    const char* c = fields[0];
    if (strcmp(c, "config") == 0 && n == 4) cmd_config(fields[1], fields[2], fields[3]);
    else if (strcmp(c, "route") == 0 && n == 4) cmd_route(fields[1], fields[2], fields[3]);
    else if (strcmp(c, "drop") == 0 && n == 2) { // the config leaves the table (an ECDS update / removal)
      int s = slot((void**)fconfigs, fields[1]);
      if (s >= 0) {
        fconfig* fc = fconfigs[s];
        fconfigs[s] = NULL;
        fconfig_unref(fc);
      }
      str_puts(&o, "dropped\t");
      str_puts(&o, fields[1]);
      out_line(&o);
      o.n = 0;
    } else if (strcmp(c, "droproute") == 0 && n == 2) {
      int s = slot((void**)rconfigs, fields[1]);
      if (s >= 0) {
        rconfig* rc = rconfigs[s];
        rconfigs[s] = NULL;
        rconfig_unref(rc);
      }
      str_puts(&o, "dropped\t");
      str_puts(&o, fields[1]);
      out_line(&o);
      o.n = 0;
    } else if (strcmp(c, "req") == 0 && n >= 2) cmd_open(fields[1], fields + 2, n - 2, true);
    else if (strcmp(c, "open") == 0 && n >= 2) cmd_open(fields[1], fields + 2, n - 2, false);
    else if (strcmp(c, "finish") == 0 && n == 2) cmd_finish(fields[1]);
    else if (strcmp(c, "bench") == 0 && n >= 2) cmd_bench(atol(fields[1]), fields + 2, n - 2);
    else if (strcmp(c, "stats") == 0) cmd_stats();
    else if (strcmp(c, "loglevel") == 0 && n == 2) {
      atomic_store(&log_level, atoi(fields[1]));
      str_puts(&o, "loglevel\tok");
      out_line(&o);
      o.n = 0;
    } else if (strcmp(c, "quit") == 0) break;
    else die("bad command: %s (%d fields)", c, n);
  }
  free(line);
  free(o.p);
  str q = {0};
  str_puts(&q, "bye");
  out_line(&q);
  free(q.p);
  // Exiting with the Go runtime loaded: Envoy never unloads the library either (dso.h).
  _exit(0);
}

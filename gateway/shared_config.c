/* Reference-counted configurations and their TLS client contexts. */
#include "shared_config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "errors.h"

#define TLS_FILES 3

/* The on-disk identity of a file when its context was built. */
typedef struct file_id_s {
    bool present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_id_t;

/* A TLS context and what it was built from, shared by every configuration
 * whose services have the same settings. */
struct tls_ref_s {
    tls_context_t *ctx;
    atomic_size_t refs;
    char *paths[TLS_FILES]; /* ca_file, cert_file, key_file or NULL */
    file_id_t ids[TLS_FILES];
    char *server_name;
    bool verify;
    bool h2;
};

/* The file settings of a service, in the order they are checked. */
typedef struct tls_file_s {
    const char *key;  /* configuration key */
    const char *kind; /* for messages */
    const char *path;
} tls_file_t;


static void tls_files(const service_options_t *o, tls_file_t files[TLS_FILES])
{
    files[0] = (tls_file_t){"ca_file", "CA file", o->ca_file};
    files[1] = (tls_file_t){"cert_file", "client certificate", o->cert_file};
    files[2] = (tls_file_t){"key_file", "client key", o->key_file};
}


static int add_line(config_errors_t *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int add_line(config_errors_t *errs, const char *fmt, ...)
{
    char line[1536];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    char *copy = strdup(line);
    char **lines = realloc(errs->lines, (errs->count + 1) * sizeof(*lines));
    if (copy == NULL || lines == NULL) {
        free(copy);
        if (lines != NULL) {
            errs->lines = lines;
        }
        return TE_NOMEM;
    }
    errs->lines = lines;
    errs->lines[errs->count++] = copy;
    return 0;
}


/* Appends a problem with the file settings of |s| as
 * "FILE: services.NAME[.KEY]: message", like the configuration check. */
static void add_tls_problem(config_errors_t *errs, const config_t *cfg,
                            const service_t *s, const char *key,
                            const char *msg)
{
    add_line(errs, "%s: services.%s%s%s: %s", cfg->file, s->name,
             key != NULL ? "." : "", key != NULL ? key : "", msg);
}


/* Opens each file of |s| once, so that a missing or unreadable one is
 * reported under the key that names it, in the words tls_context_new
 * uses, and records its identity in |ids|. Returns the number of
 * problems. */
static int check_tls_files(const config_t *cfg, const service_t *s,
                           file_id_t ids[TLS_FILES], config_errors_t *errs)
{
    tls_file_t files[TLS_FILES];
    int problems = 0;

    tls_files(&s->options, files);
    for (size_t i = 0; i < TLS_FILES; i++) {
        ids[i] = (file_id_t){0};
        if (files[i].path == NULL) {
            continue;
        }
        FILE *f = fopen(files[i].path, "r");
        if (f != NULL) {
            struct stat st;
            if (fstat(fileno(f), &st) == 0) {
                ids[i] = (file_id_t){
                    .present = true,
                    .dev = st.st_dev,
                    .ino = st.st_ino,
                    .size = st.st_size,
                    .mtime = st.st_mtim,
                };
            }
            fclose(f);
            continue;
        }
        char why[128];
        char msg[1024];
        int e = errno;
        snprintf(msg, sizeof(msg), "cannot load %s %s: %s", files[i].kind,
                 files[i].path, te_errno_text(e, why, sizeof(why)));
        add_tls_problem(errs, cfg, s, files[i].key, msg);
        problems++;
    }
    return problems;
}


/* Returns the key whose file |msg| names, or NULL. */
static const char *tls_problem_key(const service_t *s, const char *msg)
{
    tls_file_t files[TLS_FILES];

    tls_files(&s->options, files);
    for (size_t i = 0; i < TLS_FILES; i++) {
        if (files[i].path != NULL && strstr(msg, files[i].path) != NULL) {
            return files[i].key;
        }
    }
    return NULL;
}


static bool same_string(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strcmp(a, b) == 0;
}


static bool same_file(const file_id_t *a, const file_id_t *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino &&
           a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}


/* Whether |ref| was built from the settings of |s| and files that are
 * still the same on disk. */
static bool tls_ref_matches(const tls_ref_t *ref, const service_t *s,
                            const file_id_t ids[TLS_FILES])
{
    tls_file_t files[TLS_FILES];

    tls_files(&s->options, files);
    for (size_t i = 0; i < TLS_FILES; i++) {
        if (!same_string(ref->paths[i], files[i].path) ||
            !same_file(&ref->ids[i], &ids[i])) {
            return false;
        }
    }
    return same_string(ref->server_name, s->options.server_name) &&
           ref->verify == s->options.tls_verify &&
           ref->h2 == (s->scheme == SCHEME_H2);
}


static void tls_ref_release(tls_ref_t *ref)
{
    if (ref == NULL ||
        atomic_fetch_sub_explicit(&ref->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    tls_context_free(ref->ctx);
    for (size_t i = 0; i < TLS_FILES; i++) {
        free(ref->paths[i]);
    }
    free(ref->server_name);
    free(ref);
}


static tls_ref_t *find_tls_ref(const shared_config_t *prev, const service_t *s,
                               const file_id_t ids[TLS_FILES])
{
    if (prev == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < prev->cfg->nservices; i++) {
        tls_ref_t *ref = prev->tls_refs[i];
        if (ref != NULL && tls_ref_matches(ref, s, ids)) {
            return ref;
        }
    }
    return NULL;
}


static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}


/* Builds a new context for |s|. Returns NULL after appending the problem
 * to |errs|. */
static tls_ref_t *new_tls_ref(const config_t *cfg, const service_t *s,
                              const file_id_t ids[TLS_FILES],
                              config_errors_t *errs)
{
    tls_file_t files[TLS_FILES];
    tls_options_t opts = {
        .ca_file = s->options.ca_file,
        .cert_file = s->options.cert_file,
        .key_file = s->options.key_file,
        .server_name = s->options.server_name,
        .verify = s->options.tls_verify,
        .alpn = s->scheme == SCHEME_H2 ? "h2" : "http/1.1",
    };
    char err[512];

    tls_ref_t *ref = calloc(1, sizeof(*ref));
    if (ref == NULL) {
        add_tls_problem(errs, cfg, s, NULL, "out of memory");
        return NULL;
    }
    err[0] = '\0';
    if (tls_context_new(&opts, &ref->ctx, err, sizeof(err)) != 0) {
        add_tls_problem(errs, cfg, s, tls_problem_key(s, err), err);
        free(ref);
        return NULL;
    }
    atomic_init(&ref->refs, 1);
    tls_files(&s->options, files);
    bool nomem = false;
    for (size_t i = 0; i < TLS_FILES; i++) {
        ref->paths[i] = dup_or_null(files[i].path);
        ref->ids[i] = ids[i];
        nomem = nomem || (files[i].path != NULL && ref->paths[i] == NULL);
    }
    ref->server_name = dup_or_null(s->options.server_name);
    ref->verify = s->options.tls_verify;
    ref->h2 = s->scheme == SCHEME_H2;
    if (nomem || (s->options.server_name != NULL && ref->server_name == NULL)) {
        add_tls_problem(errs, cfg, s, NULL, "out of memory");
        tls_ref_release(ref);
        return NULL;
    }
    return ref;
}


static void free_shared(shared_config_t *sc)
{
    if (sc->tls_refs != NULL) {
        for (size_t i = 0; i < sc->cfg->nservices; i++) {
            tls_ref_release(sc->tls_refs[i]);
        }
    }
    free(sc->tls_refs);
    free(sc->tls);
    config_free(sc->cfg);
    free(sc);
}


/* Sets up the TLS context of each TLS service of |sc|. Loading the files
 * here lets `tutti check` report them too. Returns the number of
 * problems. */
static int build_tls(shared_config_t *sc, const shared_config_t *prev,
                     config_errors_t *errs)
{
    const config_t *cfg = sc->cfg;
    int problems = 0;

    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        file_id_t ids[TLS_FILES];
        if (s->scheme != SCHEME_HTTPS && s->scheme != SCHEME_H2) {
            continue;
        }
        if (check_tls_files(cfg, s, ids, errs) > 0) {
            problems++;
            continue;
        }
        tls_ref_t *ref = find_tls_ref(prev, s, ids);
        if (ref != NULL) {
            atomic_fetch_add_explicit(&ref->refs, 1, memory_order_relaxed);
        } else {
            ref = new_tls_ref(cfg, s, ids, errs);
        }
        if (ref == NULL) {
            problems++;
            continue;
        }
        sc->tls_refs[i] = ref;
        sc->tls[i] = ref->ctx;
    }
    return problems;
}


int shared_config_load(const char *file, const shared_config_t *prev,
                       shared_config_t **out, config_errors_t *errs)
{
    config_t *cfg = NULL;

    *out = NULL;
    int rc = config_load(file, &cfg, errs);
    if (rc != 0) {
        return rc;
    }
    shared_config_t *sc = calloc(1, sizeof(*sc));
    size_t n = cfg->nservices > 0 ? cfg->nservices : 1;
    if (sc != NULL) {
        sc->cfg = cfg;
        sc->tls = calloc(n, sizeof(*sc->tls));
        sc->tls_refs = calloc(n, sizeof(*sc->tls_refs));
    }
    if (sc == NULL || sc->tls == NULL || sc->tls_refs == NULL) {
        add_line(errs, "%s: out of memory", file);
        if (sc != NULL) {
            free_shared(sc);
        } else {
            config_free(cfg);
        }
        return TE_NOMEM;
    }
    atomic_init(&sc->refs, 1);
    if (build_tls(sc, prev, errs) > 0) {
        free_shared(sc);
        return TE_INVALID;
    }
    *out = sc;
    return 0;
}


shared_config_t *shared_config_hold(shared_config_t *sc)
{
    atomic_fetch_add_explicit(&sc->refs, 1, memory_order_relaxed);
    return sc;
}


void shared_config_release(shared_config_t *sc)
{
    if (sc == NULL ||
        atomic_fetch_sub_explicit(&sc->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    free_shared(sc);
}

/* Route matching over the configured routes. Each request scans every
 * route, because configurations are expected to have few routes. */
#include "router.h"

#include <stdbool.h>
#include <string.h>

#include "errors.h"


/* Decodes the segments of |path| (which starts with "/") into |storage|
 * as consecutive NUL-terminated strings and counts them in |*nsegs|.
 * Decoded segments cannot contain NUL, so the separators are unambiguous. */
static router_result_t split_path(const char *path, buf_t *storage,
                                  size_t *nsegs)
{
    *nsegs = 0;
    if (strcmp(path, "/") == 0) {
        return ROUTER_MATCH;
    }

    const char *seg = path + 1;
    for (;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash != NULL ? (size_t)(slash - seg) : strlen(seg);
        size_t off = storage->len;

        if (buf_append(storage, seg, len) != 0) {
            return ROUTER_NOMEM;
        }
        char *value = storage->data + off;
        if (template_decode(value, false) != 0) {
            return ROUTER_BAD_PATH;
        }
        /* "." and ".." are rejected even when escaped, because an
         * upstream may resolve them after the gateway has decoded them. */
        if (strcmp(value, ".") == 0 || strcmp(value, "..") == 0) {
            return ROUTER_BAD_PATH;
        }
        storage->len = off + strlen(value);
        if (buf_append(storage, "", 1) != 0) {
            return ROUTER_NOMEM;
        }
        (*nsegs)++;
        if (slash == NULL) {
            return ROUTER_MATCH;
        }
        seg = slash + 1;
    }
}


static bool path_matches(const route_t *r, const char *segs, size_t nsegs)
{
    if (r->nsegs != nsegs) {
        return false;
    }
    const char *s = segs;
    for (size_t i = 0; i < nsegs; i++) {
        const route_seg_t *rs = &r->segs[i];
        if (rs->literal != NULL && strcmp(rs->literal, s) != 0) {
            return false;
        }
        if (rs->literal == NULL && s[0] == '\0') {
            return false;
        }
        s += strlen(s) + 1;
    }
    return true;
}


/* Compares two routes that match the same path, left to right: the
 * first position where one has a literal and the other a parameter
 * decides. Returns >0 when |a| is preferred, <0 for |b|, 0 for the same
 * shape. */
static int compare_shapes(const route_t *a, const route_t *b)
{
    for (size_t i = 0; i < a->nsegs; i++) {
        bool a_lit = a->segs[i].literal != NULL;
        bool b_lit = b->segs[i].literal != NULL;
        if (a_lit != b_lit) {
            return a_lit ? 1 : -1;
        }
    }
    return 0;
}


static void fill_values(const route_t *r, const char *segs, router_match_t *m)
{
    const char *s = segs;
    for (size_t i = 0; i < r->nsegs; i++) {
        const route_seg_t *rs = &r->segs[i];
        if (rs->literal == NULL && rs->param_index >= 0 &&
            rs->param_index < ROUTER_MAX_PARAMS) {
            m->values[rs->param_index] = s;
        }
        s += strlen(s) + 1;
    }
}


router_result_t router_match(const config_t *cfg, const char *method,
                             const char *path, router_match_t *m, buf_t *allow)
{
    m->route = NULL;
    memset(m->values, 0, sizeof(m->values));
    buf_reset(&m->storage);
    if (allow != NULL) {
        buf_reset(allow);
    }
    if (path[0] != '/') {
        return ROUTER_BAD_PATH;
    }

    size_t nsegs;
    router_result_t rc = split_path(path, &m->storage, &nsegs);
    if (rc != ROUTER_MATCH) {
        return rc;
    }
    /* The root path has no segments, and storage may still be unallocated. */
    const char *segs = m->storage.data != NULL ? m->storage.data : "";

    const route_t *best = NULL;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const route_t *r = &cfg->routes[i];
        if (!path_matches(r, segs, nsegs)) {
            continue;
        }
        if (best == NULL || compare_shapes(r, best) > 0) {
            best = r;
        }
    }
    if (best == NULL) {
        return ROUTER_NOT_FOUND;
    }

    bool first_allow = true;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const route_t *r = &cfg->routes[i];
        if (!path_matches(r, segs, nsegs) || compare_shapes(r, best) != 0) {
            continue;
        }
        if (strcmp(r->method, method) == 0) {
            if (allow != NULL) {
                buf_reset(allow);
            }
            m->route = r;
            fill_values(r, segs, m);
            return ROUTER_MATCH;
        }
        if (allow != NULL) {
            const char *sep = first_allow ? "" : ", ";
            if (buf_appendf(allow, "%s%s", sep, r->method) != 0) {
                return ROUTER_NOMEM;
            }
        }
        first_allow = false;
    }
    return ROUTER_NO_METHOD;
}

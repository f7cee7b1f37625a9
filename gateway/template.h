/* Call path templates: "/users/{user}?limit={query.limit}".
 *
 * A template is compiled once when the configuration loads and expanded
 * per request. Every substituted value is percent-encoded for where it
 * stands: in the path, everything but RFC 3986 unreserved characters is
 * encoded (so "/" becomes %2F); in the query, the same, so "&", "=", "#"
 * and "+" cannot add or split parameters. */
#ifndef TUTTI_TEMPLATE_H
#define TUTTI_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

typedef enum {
    TPL_LITERAL, /* text copied as written */
    TPL_PARAM,   /* {name}: a route path parameter */
    TPL_QUERY,   /* {query.name}: an inbound query parameter */
} tpl_kind_t;

typedef struct tpl_part_s {
    tpl_kind_t kind;
    char *text;      /* literal text, or the parameter name */
    int param_index; /* TPL_PARAM: index into the route's parameters */
    bool in_query;   /* the part stands after the first "?" */
} tpl_part_t;

/* Where an expansion goes, which sets the rules for literal text and how
 * substituted values are encoded. */
typedef enum {
    TEMPLATE_PATH,   /* a request target: see the file comment */
    TEMPLATE_HEADER, /* a field value: literal text is visible ASCII, space
                        or tab; values get CR, LF, other control bytes,
                        "%" and non-ASCII bytes percent-encoded, so they
                        cannot end the field */
} template_syntax_t;

typedef struct template_s {
    tpl_part_t *parts;
    size_t nparts;
    template_syntax_t syntax;
} template_t;

/* Compiles |text| against the route parameter names |params|. On error
 * returns TE_INVALID and writes a message such as
 * `unknown parameter "{usr}"; the route has {user}` to |err|. */
int template_compile(const char *text, char *const *params, size_t nparams,
                     template_t *out, char *err, size_t errlen);

/* Compiles a template of |syntax|. A TEMPLATE_HEADER template need not
 * start with "/" and has no query part, and with |params| NULL its
 * parameter names are only checked for their form (they expand to the
 * empty string): a caller that knows the route compiles it again with
 * the route's parameters. */
int template_compile_syntax(const char *text, template_syntax_t syntax,
                            char *const *params, size_t nparams,
                            template_t *out, char *err, size_t errlen);

/* Returns whether |s| (|len| bytes) is a parameter name: a letter or "_"
 * followed by letters, digits or "_". */
bool template_is_param_name(const char *s, size_t len);

void template_free(template_t *t);

/* Looks up an inbound query parameter; returns the decoded value or NULL
 * when absent. */
typedef const char *(*template_query_fn)(void *arg, const char *name);

/* Appends the expansion to |out|. |values| are the decoded route parameter
 * values in the order of the route's parameter names. A missing query
 * parameter expands to the empty string. Returns 0 or TE_NOMEM. */
int template_expand(const template_t *t, const char *const *values,
                    template_query_fn query, void *query_arg, buf_t *out);

/* Appends |s| percent-encoded: every byte but ALPHA / DIGIT / "-" / "." /
 * "_" / "~" becomes %XX. */
int template_encode(buf_t *out, const char *s);

/* Decodes %XX escapes of |s| in place (and "+" as a space when |plus| is
 * true). Returns TE_INVALID on a malformed escape or a decoded NUL. */
int template_decode(char *s, bool plus);

#endif

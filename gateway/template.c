/* Call path templates: compiled once per configuration, expanded per
 * request with every substituted value percent-encoded. */
#include "template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "errors.h"

#define QUERY_PREFIX "query."


static bool is_unreserved(unsigned char c)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
        return true;
    }
    if (c >= '0' && c <= '9') {
        return true;
    }
    return c == '-' || c == '.' || c == '_' || c == '~';
}


bool template_is_param_name(const char *s, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        bool digit = c >= '0' && c <= '9';
        if (!alpha && c != '_' && !(digit && i > 0)) {
            return false;
        }
    }
    return true;
}


/* Query parameter names are limited to unreserved characters so that the
 * name itself never needs encoding when it appears in messages. */
static bool is_query_name(const char *s, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (!is_unreserved((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}


static int add_part(template_t *t, tpl_kind_t kind, const char *text,
                    size_t len, int param_index, bool in_query)
{
    tpl_part_t *parts = realloc(t->parts, (t->nparts + 1) * sizeof(*parts));
    if (parts == NULL) {
        return TE_NOMEM;
    }
    t->parts = parts;

    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return TE_NOMEM;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';

    tpl_part_t *p = &t->parts[t->nparts++];
    p->kind = kind;
    p->text = copy;
    p->param_index = param_index;
    p->in_query = in_query;
    return 0;
}


/* Writes the unknown-parameter message, listing the route's parameters as
 * "{a}, {b}" or saying it has none. */
static void describe_unknown(char *err, size_t errlen, const char *name,
                             size_t len, char *const *params, size_t nparams)
{
    int n = snprintf(err, errlen, "unknown parameter \"{%.*s}\"; the route has",
                     (int)len, name);
    if (n < 0 || (size_t)n >= errlen) {
        return;
    }
    size_t used = (size_t)n;
    if (nparams == 0) {
        snprintf(err + used, errlen - used, " no parameters");
        return;
    }
    for (size_t i = 0; i < nparams; i++) {
        n = snprintf(err + used, errlen - used, "%s{%s}", i == 0 ? " " : ", ",
                     params[i]);
        if (n < 0 || (size_t)n >= errlen - used) {
            return;
        }
        used += (size_t)n;
    }
}


/* Compiles the placeholder between the braces at |s| (|len| bytes). */
static int compile_placeholder(template_t *t, const char *s, size_t len,
                               bool in_query, char *const *params,
                               size_t nparams, char *err, size_t errlen)
{
    size_t plen = strlen(QUERY_PREFIX);
    if (len > plen && memcmp(s, QUERY_PREFIX, plen) == 0) {
        if (!is_query_name(s + plen, len - plen)) {
            snprintf(err, errlen,
                     "invalid placeholder \"{%.*s}\": a query parameter name "
                     "may contain only letters, digits, \"-\", \".\", \"_\" "
                     "and \"~\"",
                     (int)len, s);
            return TE_INVALID;
        }
        return add_part(t, TPL_QUERY, s + plen, len - plen, -1, in_query);
    }
    if (!template_is_param_name(s, len)) {
        snprintf(err, errlen,
                 "invalid placeholder \"{%.*s}\": expected {name} or "
                 "{query.name}, where a name starts with a letter or \"_\" "
                 "and continues with letters, digits or \"_\"",
                 (int)len, s);
        return TE_INVALID;
    }
    if (params == NULL && t->syntax == TEMPLATE_HEADER) {
        return add_part(t, TPL_PARAM, s, len, -1, in_query);
    }
    for (size_t i = 0; i < nparams; i++) {
        /* params is NULL only when nparams is 0. */
        /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
        if (strlen(params[i]) == len && memcmp(params[i], s, len) == 0) {
            return add_part(t, TPL_PARAM, s, len, (int)i, in_query);
        }
    }
    describe_unknown(err, errlen, s, len, params, nparams);
    return TE_INVALID;
}


/* Checks one byte of literal text at |text|[|i|]. Non-ASCII bytes and
 * malformed escapes are rejected too, because the expansion goes into a
 * request line as written. */
static int check_literal_byte(const char *text, size_t i, char *err,
                              size_t errlen)
{
    unsigned char c = (unsigned char)text[i];
    if (c <= 0x20 || c == 0x7f) {
        snprintf(err, errlen,
                 "literal text must not contain spaces or control characters "
                 "(byte 0x%02X at offset %zu); percent-encode it",
                 c, i);
        return TE_INVALID;
    }
    if (c >= 0x80) {
        snprintf(err, errlen,
                 "literal text must be ASCII (byte 0x%02X at offset %zu); "
                 "percent-encode it",
                 c, i);
        return TE_INVALID;
    }
    if (c == '#') {
        snprintf(err, errlen,
                 "literal text must not contain \"#\" (offset %zu) because "
                 "a fragment is never sent to a server",
                 i);
        return TE_INVALID;
    }
    if (c == '%') {
        if (hex_digit_value((unsigned char)text[i + 1]) < 0 ||
            hex_digit_value((unsigned char)text[i + 2]) < 0) {
            snprintf(err, errlen,
                     "malformed escape at offset %zu: \"%%\" must be "
                     "followed by two hex digits",
                     i);
            return TE_INVALID;
        }
    }
    return 0;
}


/* Checks one byte of literal text in a field value template. */
static int check_header_byte(unsigned char c, size_t i, char *err,
                             size_t errlen)
{
    if (c == '\r' || c == '\n') {
        snprintf(err, errlen,
                 "a header value must not contain CR or LF (offset %zu), "
                 "which would end the field early",
                 i);
        return TE_INVALID;
    }
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
        snprintf(err, errlen,
                 "a header value must not contain control characters (byte "
                 "0x%02X at offset %zu)",
                 c, i);
        return TE_INVALID;
    }
    return 0;
}


static int compile_parts(const char *text, char *const *params, size_t nparams,
                         template_t *t, char *err, size_t errlen)
{
    bool header = t->syntax == TEMPLATE_HEADER;
    bool in_query = false;
    size_t lit_start = 0;
    size_t i = 0;

    while (text[i] != '\0') {
        char c = text[i];
        bool starts_query = c == '?' && !in_query && !header;
        if (c == '{' || starts_query) {
            if (i > lit_start) {
                int rc = add_part(t, TPL_LITERAL, text + lit_start,
                                  i - lit_start, -1, in_query);
                if (rc != 0) {
                    return rc;
                }
            }
            lit_start = i;
        }
        if (starts_query) {
            /* The "?" itself opens the query part, so split here. */
            in_query = true;
            i++;
            continue;
        }
        if (c == '}') {
            snprintf(err, errlen, "unmatched \"}\" at offset %zu", i);
            return TE_INVALID;
        }
        if (c != '{') {
            int rc = header
                         ? check_header_byte((unsigned char)c, i, err, errlen)
                         : check_literal_byte(text, i, err, errlen);
            if (rc != 0) {
                return rc;
            }
            i++;
            continue;
        }

        size_t open = i;
        size_t close = open + 1;
        while (text[close] != '\0' && text[close] != '}' &&
               text[close] != '{') {
            close++;
        }
        if (text[close] != '}') {
            snprintf(err, errlen, "unclosed \"{\" at offset %zu", open);
            return TE_INVALID;
        }
        int rc = compile_placeholder(t, text + open + 1, close - open - 1,
                                     in_query, params, nparams, err, errlen);
        if (rc != 0) {
            return rc;
        }
        i = close + 1;
        lit_start = i;
    }
    if (i > lit_start) {
        return add_part(t, TPL_LITERAL, text + lit_start, i - lit_start, -1,
                        in_query);
    }
    return 0;
}


int template_compile(const char *text, char *const *params, size_t nparams,
                     template_t *out, char *err, size_t errlen)
{
    return template_compile_syntax(text, TEMPLATE_PATH, params, nparams, out,
                                   err, errlen);
}


int template_compile_syntax(const char *text, template_syntax_t syntax,
                            char *const *params, size_t nparams,
                            template_t *out, char *err, size_t errlen)
{
    template_t t = {.syntax = syntax};

    if (errlen > 0) {
        err[0] = '\0';
    }
    out->parts = NULL;
    out->nparts = 0;
    out->syntax = syntax;
    if (syntax == TEMPLATE_PATH && text[0] != '/') {
        snprintf(err, errlen, "must start with \"/\"");
        return TE_INVALID;
    }
    int rc = compile_parts(text, params, nparams, &t, err, errlen);
    if (rc != 0) {
        if (rc == TE_NOMEM) {
            snprintf(err, errlen, "out of memory");
        }
        template_free(&t);
        return rc;
    }
    *out = t;
    return 0;
}


void template_free(template_t *t)
{
    if (t == NULL) {
        return;
    }
    for (size_t i = 0; i < t->nparts; i++) {
        free(t->parts[i].text);
    }
    free(t->parts);
    t->parts = NULL;
    t->nparts = 0;
}


/* Appends |s| to a field value with the bytes that may not stand there
 * as written percent-encoded; "%" too, so that decoding gives |s| back. */
static int encode_header_value(buf_t *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t start = 0;
    size_t i = 0;

    for (; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '%') {
            continue;
        }
        char esc[3] = {'%', hex[c >> 4], hex[c & 0x0f]};
        if (buf_append(out, s + start, i - start) != 0 ||
            buf_append(out, esc, sizeof(esc)) != 0) {
            return TE_NOMEM;
        }
        start = i + 1;
    }
    return buf_append(out, s + start, i - start);
}


int template_expand(const template_t *t, const char *const *values,
                    template_query_fn query, void *query_arg, buf_t *out)
{
    int (*encode)(buf_t *, const char *) =
        t->syntax == TEMPLATE_HEADER ? encode_header_value : template_encode;
    /* An empty expansion is still a value: keep out->data non-NULL. */
    int rc = buf_append(out, "", 0);

    for (size_t i = 0; i < t->nparts && rc == 0; i++) {
        const tpl_part_t *p = &t->parts[i];
        const char *value = NULL;

        switch (p->kind) {
        case TPL_LITERAL:
            rc = buf_append_str(out, p->text);
            break;
        case TPL_PARAM:
            value = values != NULL && p->param_index >= 0
                        ? values[p->param_index]
                        : NULL;
            rc = encode(out, value != NULL ? value : "");
            break;
        case TPL_QUERY:
            value = query != NULL ? query(query_arg, p->text) : NULL;
            rc = encode(out, value != NULL ? value : "");
            break;
        default:
            rc = TE_INVALID;
            break;
        }
    }
    return rc;
}


int template_encode(buf_t *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t start = 0;
    size_t i = 0;

    /* Runs of unreserved bytes are appended in one call. */
    for (; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            continue;
        }
        char esc[3] = {'%', hex[c >> 4], hex[c & 0x0f]};
        if (buf_append(out, s + start, i - start) != 0 ||
            buf_append(out, esc, sizeof(esc)) != 0) {
            return TE_NOMEM;
        }
        start = i + 1;
    }
    return buf_append(out, s + start, i - start);
}


int template_decode(char *s, bool plus)
{
    char *w = s;

    for (const char *r = s; *r != '\0'; r++) {
        if (*r == '+' && plus) {
            *w++ = ' ';
            continue;
        }
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int byte = percent_escape_value(r);
        if (byte <= 0) {
            return TE_INVALID;
        }
        *w++ = (char)byte;
        r += 2;
    }
    *w = '\0';
    return 0;
}

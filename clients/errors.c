/* Error kinds as they appear in responses and logs, and errno text. */
#include "errors.h"

#include <stdio.h>
#include <string.h>

const char *te_kind(int err)
{
    switch (err) {
    case TE_OK:
        return "ok";
    case TE_NOMEM:
        return "internal";
    case TE_RESOLVE:
        return "resolve";
    case TE_CONNECT:
        return "connect";
    case TE_RESET:
        return "reset";
    case TE_BAD_RESPONSE:
        return "bad_response";
    case TE_CANCELLED:
        return "cancelled";
    case TE_OVERLOADED:
        return "overloaded";
    default:
        return "internal";
    }
}


/* glibc with _GNU_SOURCE declares the GNU strerror_r, which returns the
 * message. Elsewhere the POSIX one fills |buf| and returns 0 or an error. */
const char *te_errno_text(int err, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(err, buf, len);
#else
    if (strerror_r(err, buf, len) != 0) {
        snprintf(buf, len, "error %d", err);
    }
    return buf;
#endif
}

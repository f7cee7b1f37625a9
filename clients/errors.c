/* Error kinds as they appear in responses and logs. */
#include "errors.h"

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

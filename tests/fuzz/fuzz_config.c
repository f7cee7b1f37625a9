/* Fuzz target: the configuration loader (what `tutti check` runs) on
 * arbitrary bytes. A configuration is either loaded with no error lines,
 * or rejected with at least one; both are freed in full, so a leak
 * shows up under LeakSanitizer. */
#include <stdint.h>
#include <stdlib.h>

#include "config.h"
#include "errors.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    config_t *cfg = NULL;
    config_errors_t errs = {0};

    int rc = config_parse("fuzz.json", (const char *)data, size, &cfg, &errs);
    if (rc == 0 && (cfg == NULL || errs.count != 0)) {
        abort();
    }
    if (rc != 0 && (cfg != NULL || errs.count == 0)) {
        abort();
    }
    config_free(cfg);
    config_errors_free(&errs);
    return 0;
}

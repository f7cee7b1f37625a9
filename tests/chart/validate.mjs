// Validate rendered Kubernetes manifests offline against the OpenAPI
// schemas shipped in kubernetes-models.
//
// Usage: node validate.mjs TOOLS_NODE_DIR FILE...
// TOOLS_NODE_DIR is the folder that `make tools` installed kubernetes-models
// and yaml into (tools/node). Each FILE contains YAML documents, for example
// the output of `helm template`. Prints one line per document and exits 1
// when a document is invalid or of a kind this script cannot check.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [toolsDir, ...files] = process.argv.slice(2);
if (!toolsDir || files.length === 0) {
    console.error("usage: node validate.mjs TOOLS_NODE_DIR FILE...");
    process.exit(2);
}
const require = createRequire(join(resolve(toolsDir), "package.json"));
const YAML = require("yaml");

// The Prometheus Operator's CRD is not in kubernetes-models, so only the
// fields this chart relies on are checked: a selector, and endpoints with
// a port and Prometheus durations.
function checkServiceMonitor(doc) {
    const problems = [];
    const spec = doc.spec;
    if (!doc.metadata || typeof doc.metadata.name !== "string") {
        problems.push("metadata.name must be a string");
    }
    if (!spec || typeof spec !== "object") {
        return problems.concat("spec is required");
    }
    if (!spec.selector || typeof spec.selector !== "object") {
        problems.push("spec.selector is required");
    }
    if (!Array.isArray(spec.endpoints) || spec.endpoints.length === 0) {
        problems.push("spec.endpoints must be a non-empty array");
    } else {
        spec.endpoints.forEach((ep, i) => {
            if (typeof ep.port !== "string" && ep.targetPort === undefined) {
                problems.push(`spec.endpoints[${i}] needs port or targetPort`);
            }
            for (const key of ["interval", "scrapeTimeout"]) {
                if (ep[key] !== undefined &&
                    !/^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$/
                        .test(ep[key])) {
                    problems.push(`spec.endpoints[${i}].${key} is not a ` +
                                  `Prometheus duration: ${ep[key]}`);
                }
            }
        });
    }
    return problems;
}

// Module of a kind in kubernetes-models: "apps/v1" + "Deployment" gives
// kubernetes-models/apps/v1/Deployment, the core group "v1" gives
// kubernetes-models/v1/Service.
function modelFor(apiVersion, kind) {
    try {
        return require(`kubernetes-models/${apiVersion}/${kind}`)[kind];
    } catch (err) {
        if (err.code === "MODULE_NOT_FOUND") {
            return undefined;
        }
        throw err;
    }
}

let failed = 0;
let count = 0;
for (const file of files) {
    const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
    for (const parsed of docs) {
        if (parsed.errors.length > 0) {
            console.log(`FAIL ${file}: YAML error: ${parsed.errors[0].message}`);
            failed++;
            continue;
        }
        const doc = parsed.toJS();
        if (doc === null || doc === undefined) {
            continue;
        }
        count++;
        const name = `${doc.kind}/${doc.metadata && doc.metadata.name}`;
        let problems;
        if (doc.apiVersion === "monitoring.coreos.com/v1" &&
            doc.kind === "ServiceMonitor") {
            problems = checkServiceMonitor(doc);
        } else {
            const Model = modelFor(doc.apiVersion, doc.kind);
            if (Model === undefined) {
                problems = [`no schema for ${doc.apiVersion} ${doc.kind}`];
            } else {
                try {
                    new Model(doc).validate();
                    problems = [];
                } catch (err) {
                    problems = [err.message];
                }
            }
        }
        if (problems.length > 0) {
            failed++;
            console.log(`FAIL ${name}: ${problems.join("; ")}`);
        } else {
            console.log(`ok   ${name}`);
        }
    }
}
if (count === 0) {
    console.log("FAIL no manifests found");
    process.exit(1);
}
process.exit(failed > 0 ? 1 : 0);

// Parse an AsyncAPI document with the AsyncAPI project's own parser and print its diagnostics
// as JSON lines; exit 1 when any has error severity (0), 2 when the document cannot be read.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs FILE");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"), { source: path });
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
process.exit(errors.length > 0 || document === undefined ? 1 : 0);

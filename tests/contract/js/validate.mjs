// Parse AsyncAPI documents with the AsyncAPI project's own parser and print every diagnostic as a
// JSON line naming its file; exit 1 when any has error severity (0) or a document cannot be parsed.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs FILE...");
  process.exit(2);
}
const parser = new Parser();
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await parser.parse(await readFile(file, "utf8"), { source: file });
  for (const d of diagnostics) {
    console.log(JSON.stringify({ file, severity: d.severity, code: d.code, message: d.message, path: d.path }));
  }
  failed ||= document === undefined || diagnostics.some((d) => d.severity === DiagnosticSeverity.Error);
}
process.exit(failed ? 1 : 0);

// Reads a wasm module's function bodies and its "name" section: the code size of every named
// function (what twiggy's `top` shows, without installing twiggy). Used by scripts/size-report
// on the names-preserving build that scripts/package makes beside the release one.
//
//   node scripts/wasm-names.mjs FILE.wasm [N]   prints the N largest functions (default 40)
import { readFileSync } from "node:fs";

/** `{ functions: [{ index, name, size }], dataBytes, importedFunctions }` of a wasm binary. */
export function functionSizes(bytes) {
  let pos = 8;
  const leb = () => {
    let result = 0, shift = 0, b;
    do {
      b = bytes[pos++];
      result += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return result;
  };
  const name = () => {
    const len = leb();
    const s = new TextDecoder().decode(bytes.subarray(pos, pos + len));
    pos += len;
    return s;
  };
  const limits = () => {
    const flags = bytes[pos++];
    leb();
    if (flags & 1) leb();
  };
  let importedFunctions = 0;
  const bodies = [];
  const names = new Map();
  let dataBytes = 0;
  while (pos < bytes.length) {
    const id = bytes[pos++];
    const size = leb();
    const end = pos + size;
    if (id === 2) {
      for (let n = leb(); n > 0; n--) {
        name();
        name();
        const kind = bytes[pos++];
        if (kind === 0) { leb(); importedFunctions++; }
        else if (kind === 1) { pos++; limits(); }
        else if (kind === 2) limits();
        else if (kind === 3) pos += 2;
        else if (kind === 4) { pos++; leb(); }
      }
    } else if (id === 10) {
      for (let n = leb(); n > 0; n--) {
        const len = leb();
        // A body of no locals and `unreachable` alone: a slot kept for the function table whose
        // code was optimized away.
        const trap = len === 3 && bytes[pos] === 0 && bytes[pos + 1] === 0 && bytes[pos + 2] === 0x0b;
        bodies.push({ size: len + (len < 128 ? 1 : len < 16384 ? 2 : 3), trap });
        pos += len;
      }
    } else if (id === 11) {
      dataBytes += size;
    } else if (id === 0) {
      const section = name();
      if (section === "name") {
        while (pos < end) {
          const sub = bytes[pos++];
          const subSize = leb();
          const subEnd = pos + subSize;
          if (sub === 1) {
            for (let n = leb(); n > 0; n--) {
              const index = leb();
              names.set(index, name());
            }
          }
          pos = subEnd;
        }
      }
    }
    pos = end;
  }
  const functions = bodies.map(({ size, trap }, i) => {
    const index = importedFunctions + i;
    return { index, name: demangle(names.get(index) ?? `func[${index}]`), size, trap };
  });
  return { functions, dataBytes, importedFunctions };
}

const ESCAPES = { SP: "@", BP: "*", RF: "&", LT: "<", GT: ">", LP: "(", RP: ")", C: "," };

/** A Rust symbol as a path, `a::b::c`, without its hash: legacy mangling (`_ZN…E`) in full,
 * v0 (`_R…`, the prebuilt core and alloc) as its identifiers only; any other name as it is. */
export function demangle(name) {
  if (name.startsWith("_R")) {
    const idents = [];
    const rest = name.replace(/C[sa-z][0-9A-Za-z]*_/g, "C").replace(/B[0-9A-Za-z]*_/g, "");
    for (let pos = 2; pos < rest.length; ) {
      const digits = /^\d+/.exec(rest.slice(pos));
      if (!digits) {
        pos++;
        continue;
      }
      pos += digits[0].length;
      idents.push(rest.slice(pos, pos + Number(digits[0])));
      pos += Number(digits[0]);
    }
    return idents.length ? idents.join("::") : name;
  }
  if (!name.startsWith("_ZN")) return name;
  const parts = [];
  let pos = 3;
  while (pos < name.length && name[pos] !== "E") {
    const digits = /^\d+/.exec(name.slice(pos));
    if (!digits) return name;
    pos += digits[0].length;
    parts.push(name.slice(pos, pos + Number(digits[0])));
    pos += Number(digits[0]);
  }
  if (/^h[0-9a-f]{16}$/.test(parts.at(-1))) parts.pop();
  return parts
    .map((p) => p.replace(/^_\$/, "$").replace(/\$([A-Z]+|u[0-9a-f]+)\$/g, (m, e) =>
      ESCAPES[e] ?? (e[0] === "u" ? String.fromCodePoint(parseInt(e.slice(1), 16)) : m)).replace(/\.\./g, "::"))
    .join("::");
}

/** The area a function belongs to, from its (demangled) name. */
export function areaOf(name) {
  if (/rtlink::wasm|^rt_(new|buf|input|free)$/.test(name)) return "glue";
  if (/rtlink::core|rtlink_protocol/.test(name)) return "core";
  return "runtime";
}

/** Functions of `core::fmt` (the formatting machinery) with code in them. A name alone does not
 * count: a formatting function whose callers were all optimized away keeps its slot in the
 * function table with a body of `unreachable`. `core::panicking::panic_fmt` is not formatting:
 * it hands its arguments, unformatted, to the module's panic handler, which traps
 * (src/wasm/panic.rs); the library's own panic paths (a failed allocation, an index out of
 * range) call it. */
export function fmtFunctions(functions) {
  return functions.filter((f) => !f.trap && /core::fmt|::fmt::|as core::fmt/.test(f.name));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { functions, dataBytes } = functionSizes(readFileSync(process.argv[2]));
  const top = Number(process.argv[3] ?? 40);
  const total = functions.reduce((a, f) => a + f.size, 0);
  const byArea = {};
  for (const f of functions) byArea[areaOf(f.name)] = (byArea[areaOf(f.name)] ?? 0) + f.size;
  console.log(`code ${total} B in ${functions.length} functions, data ${dataBytes} B`);
  for (const [area, size] of Object.entries(byArea).sort((a, b) => b[1] - a[1])) console.log(`  ${area.padEnd(11)} ${String(size).padStart(7)} B`);
  for (const f of [...functions].sort((a, b) => b.size - a.size).slice(0, top)) {
    console.log(`${String(f.size).padStart(7)}  ${areaOf(f.name).padEnd(10)} ${f.name.slice(0, 150)}`);
  }
}

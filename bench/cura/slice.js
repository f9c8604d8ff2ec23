// Slice one STL with CuraEngine (the npm package cura-wasm, CuraEngine compiled to WebAssembly) for a printer
// definition of cura-wasm-definitions: node slice.js PART.stl OUT.gcode [PRINTER] [OVERRIDES_JSON]
// Run by bench/cura/parts.py; needs `npm install cura-wasm cura-wasm-definitions` in this folder.
const {CuraWASM} = require('cura-wasm');
const {resolveDefinition} = require('cura-wasm-definitions');
const fs = require('fs');

const [, , stl, out, printer = 'creality_ender3', overrides = '[]'] = process.argv;
const slicer = new CuraWASM({definition: resolveDefinition(printer), overrides: JSON.parse(overrides), verbose: false});
const data = fs.readFileSync(stl);
slicer.slice(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength), 'stl')
  .then(({gcode}) => { fs.writeFileSync(out, Buffer.from(gcode)); process.exit(0); })
  .catch((err) => { console.error(`${stl}: ${err}`); process.exit(1); });

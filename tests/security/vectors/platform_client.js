// Independent reference for tests/security/test_envelope.py::test_matches_the_platform_client_reference.
// Re-implements the national platform's public JS client (sign text, data key, encData) on the
// sm-crypto npm package. Not run by the suite (CI has no npm packages); to regenerate the vectors:
//   npm install sm-crypto@0.3.13 && echo '{"appId":..., "appSecret":..., "privHex":..., "timestamp":"1767196800000",
//     "version":"1.0.0", "data":{...}}' | node platform_client.js
const { sm2, sm4 } = require('sm-crypto');
const fs = require('fs');
const { appId, appSecret, privHex, timestamp, version, data } = JSON.parse(fs.readFileSync(0, 'utf8'));

function sortObj(o) { const r = {}; for (const k of Object.keys(o).sort()) r[k] = o[k]; return r; }
function utf8(s) { return Array.from(Buffer.from(s, 'utf8')); }
function pkcs7(a) { const n = 16 - a.length % 16; return a.concat(new Array(n).fill(n)); }
function sm4Hex(bytes, key) { return sm4.encrypt(pkcs7(bytes), key, { padding: 'none' }).toUpperCase(); }

// sign text: drop signData/encData/extra and nulls, sort; `data` with numbers/booleans as strings,
// empty arrays and falsy values dropped, objects in arrays key-sorted; `&key=appSecret` last.
function signText(fields) {
  const t = [];
  const f = sortObj(Object.fromEntries(Object.entries(fields).filter(
    ([k, v]) => !['signData', 'encData', 'extra'].includes(k) && v != null)));
  for (const k of Object.keys(f)) {
    const v = f[k];
    if (!(v || ('' + v))) continue;
    if (k !== 'data') { t.push(k + '=' + v); continue; }
    const d = Object.assign({}, v);
    for (const kk of Object.keys(d)) {
      if (typeof d[kk] === 'number' || typeof d[kk] === 'boolean') d[kk] = '' + d[kk];
      if (Array.isArray(d[kk]) && !d[kk].length) delete d[kk];
      if (Array.isArray(d[kk]) && d[kk].length) d[kk] = d[kk].map(sortObj);
      if (!(d[kk] != null && d[kk])) delete d[kk];
    }
    t.push(k + '=' + JSON.stringify(sortObj(d)));
  }
  t.push('key=' + appSecret);
  return t.join('&');
}

// data key: SM4-ECB-PKCS#7(appSecret) under the first 16 characters of appId; first 16 hex chars
const dataKey = sm4Hex(utf8(appSecret), utf8(appId.substr(0, 16))).substr(0, 16);
// encData: JSON of the payload, every char above 127 as \uXXXX, SM4-ECB-PKCS#7 under the data key
let json = '';
const raw = JSON.stringify(data);
for (let i = 0; i < raw.length; i++) {
  const c = raw.charCodeAt(i);
  json += c > 127 ? '\\u' + c.toString(16).padStart(4, '0') : raw.charAt(i);
}
const text = signText({ appId, encType: 'SM4', signType: 'SM2', timestamp, version, data });
console.log(JSON.stringify({
  dataKey,
  encData: sm4Hex(utf8(json), utf8(dataKey)),
  signText: text,
  signData: Buffer.from(sm2.doSignature(text, privHex, { hash: true }), 'hex').toString('base64'),
}));

// Mints a turnd REST credential in Node: node mint.js SECRET USER TTL_SECONDS
// Prints {"username":"<expiry>:<user>","credential":"base64(HMAC-SHA1(secret, username))"}.
const crypto = require("node:crypto");

function turnCredential(secret, user, ttlSeconds) {
  const expiry = Math.floor(Date.now() / 1000) + ttlSeconds;
  const username = `${expiry}:${user}`;
  const credential = crypto.createHmac("sha1", secret).update(username).digest("base64");
  return { username, credential };
}

const [secret, user, ttl] = process.argv.slice(2);
console.log(JSON.stringify(turnCredential(secret, user, Number(ttl))));

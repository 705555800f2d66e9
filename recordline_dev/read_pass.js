// A read pass (`Cloud-CDN-Cookie`) checked as Cloud CDN checks a signed cookie, for the
// shared cache's pass mode (recordline_dev/cache.py): the HMAC-SHA1 of
// `URLPrefix=…:Expires=…:KeyName=…` with the key of that name (base64url, padded), an
// `Expires` still to come, and the request's URL starting with the decoded prefix.
// `verdict` is "ok" for a request the cache may serve, and why not otherwise: whatever
// goes wrong in the check (an exception included) is a refusal, never "ok".
import crypto from 'crypto';

const COOKIE = 'Cloud-CDN-Cookie';
// Longer than any pass the service issues; a longer one is refused unread.
const MOST = 2048;
const SIGNED = /^URLPrefix=([A-Za-z0-9_-]+={0,2}):Expires=([0-9]{1,12}):KeyName=([a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)$/;

function cookie(r) {
    // njs 0.7 has no `for … of`.
    const parts = (r.headersIn.Cookie || '').split(';');
    for (let i = 0; i < parts.length; i++) {
        const pair = parts[i].trim();
        if (pair.startsWith(COOKIE + '=')) {
            return pair.slice(COOKIE.length + 1);
        }
    }
    return null;
}

function keys(r) {
    // No prototype: a KeyName such as `constructor` finds no key.
    const found = Object.create(null);
    const entries = (r.variables.read_pass_keys || '').split(',');
    for (let i = 0; i < entries.length; i++) {
        const entry = entries[i];
        const at = entry.indexOf(':');
        if (at > 0) {
            found[entry.slice(0, at)] = Buffer.from(entry.slice(at + 1), 'base64url');
        }
    }
    return found;
}

function urlsafe(base64) {
    return base64.replace(/\+/g, '-').replace(/\//g, '_');
}

function denied(r) {
    const value = cookie(r);
    if (value === null || value.length > MOST) {
        return 'malformed';
    }
    const at = value.lastIndexOf(':Signature=');
    if (at < 0) {
        return 'malformed';
    }
    const signed = value.slice(0, at);
    const parts = SIGNED.exec(signed);
    if (parts === null) {
        return 'malformed';
    }
    const found = keys(r);
    const key = Object.prototype.hasOwnProperty.call(found, parts[3]) ? found[parts[3]] : undefined;
    if (key === undefined) {
        return 'unknown key';
    }
    const expected = urlsafe(crypto.createHmac('sha1', key).update(signed).digest('base64'));
    if (value.slice(at + ':Signature='.length) !== expected) {
        return 'bad signature';
    }
    if (Number(parts[2]) <= Date.now() / 1000) {
        return 'expired';
    }
    const prefix = Buffer.from(parts[1], 'base64url').toString();
    const url = r.variables.scheme + '://' + r.variables.host + r.variables.request_uri;
    if (!url.startsWith(prefix)) {
        return 'another prefix';
    }
    return '';
}

function verdict(r) {
    if (r.variables.read_pass_route !== 'pass') {
        return 'ok';
    }
    try {
        const reason = denied(r);
        return reason === '' ? 'ok' : reason;
    } catch (e) {
        return 'error';
    }
}

export default {verdict};

// A follower written with the Durable Streams TypeScript client (@durable-streams/client
// from npm), as its README shows: `stream()` from an offset, live, a subscriber that keeps
// each batch's items and offset. It stops (as if killed) once it has `count` rows, and
// prints what it read and the offset it reported with them, as one JSON line.
//
//   node tests/streams_client.mjs URL OFFSET LIVE COUNT
import { stream } from "@durable-streams/client"

const [url, offset, live, count] = process.argv.slice(2)
const rows = []
let last = offset

const res = await stream({ url, offset, live })
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`only ${rows.length} rows in 30 s`)), 30_000)
  res.subscribeJson(async (batch) => {
    for (const item of batch.items) rows.push(item.message_id)
    last = batch.offset
    if (rows.length >= Number(count)) {
      clearTimeout(timer)
      resolve()
    }
  })
  res.closed.catch(reject)
})
res.cancel("enough")
console.log(JSON.stringify({ rows, offset: last }))
process.exit(0)

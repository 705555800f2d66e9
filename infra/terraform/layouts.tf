# How each system's `records` is laid out for analysts (docs/layouts.md): the column it
# is partitioned by, and by what unit of time; up to four columns it is clustered by; and
# the top-level copies of an attribute or a typed field it holds for them. BigQuery
# partitions and clusters by top-level columns only: a JSON member (an attribute) or a
# RECORD's field (a typed column, under `fields`) can be neither, so a layout names a
# copy (`columns`), which `records` is created with and the service writes in every row
# (app/store/bigquery/layout.py). Everything here is checked at plan time, each refusal
# naming its reason (limits.tf).
#
# The read API pages through ingest_time, the default's partitioning and clustering
# column: a layout that keeps ingest_time first in the clustering keeps its pages about
# as cheap as they are on the default. One clustered first by another column (a
# customer's) makes every page read whole partitions, every column of them (a day of
# ingest, or a month of events): BigQuery sorts a table one way only. Such a layout is
# refused unless it says so (pages_read_whole_partitions = true); docs/layouts.md says
# what each layout costs the read API and the analyst.

locals {
  # The columns of `records` the service writes that a layout may partition (TIMESTAMP)
  # or cluster by, by type: a Record's top-level columns but its JSON ones
  # (app/records.py; a test keeps them equal).
  layout_service_columns = {
    message_id       = "STRING"
    publish_time     = "TIMESTAMP"
    ingest_time      = "TIMESTAMP"
    id               = "STRING"
    timestamp        = "TIMESTAMP"
    subscription     = "STRING"
    delivery_attempt = "INT64"
    trace_id         = "STRING"
    schema           = "STRING"
  }
  # Every name the service's columns take (BigQuery's names are case-insensitive).
  layout_reserved = concat(keys(local.layout_service_columns), ["data", "attributes", "fields", "projection_errors"])
  # What BigQuery clusters by: top-level columns of these types
  # (https://cloud.google.com/bigquery/docs/clustered-tables#cluster_column_types; not
  # FLOAT64, BYTES, JSON, a RECORD or a REPEATED one), and what a layout partitions by.
  layout_clusterable   = ["STRING", "INT64", "NUMERIC", "BIGNUMERIC", "BOOL", "DATE", "DATETIME", "TIMESTAMP"]
  layout_partitionable = ["DATE", "TIMESTAMP"]

  # Each typed field a system's schema file makes (systems.tf, local.typed_column), by its
  # path under `fields`, three levels deep: its BigQuery type, or REPEATED for one that
  # is (or lies inside one), which no layout can use.
  typed_leaves = {
    for k, column in local.typed_column : k => column == null ? {} : merge(
      { for a in column.fields : a.name => a.mode == "REPEATED" ? "REPEATED" : a.type },
      merge({}, [
        for a in column.fields : {
          for b in try(a.fields, []) : "${a.name}.${b.name}" => a.mode == "REPEATED" || b.mode == "REPEATED" ? "REPEATED" : b.type
        }
      ]...),
      merge({}, flatten([
        for a in column.fields : [
          for b in try(a.fields, []) : {
            for c in try(b.fields, []) : "${a.name}.${b.name}.${c.name}" => a.mode == "REPEATED" || b.mode == "REPEATED" || c.mode == "REPEATED" ? "REPEATED" : c.type
          }
        ]
      ])...),
    )
  }

  # Every table a system lays out: its `records` (`layout`), by the system's name, and
  # each table of its own (`tables`, records_NAME beside it), by "SYSTEM tables.NAME".
  # Both are laid out, and checked, by what follows; a table of its own is never read
  # by the read API, so what its clustering costs a page is no question there.
  laid_out = merge(
    { for k, v in local.systems : k => { system = k, named = "layout", layout = v.layout, paged = true } },
    merge({}, [
      for k, v in local.systems : {
        for name, t in coalesce(v.tables, {}) : "${k} tables.${name}" => { system = k, named = "tables.${name}", layout = t, paged = false }
      }
    ]...),
  )

  # Each layout, its defaults filled in: today's, partitioned by day and clustered on
  # ingest_time. A copy's type is its source's: STRING for an attribute, the typed
  # field's own for a field ("" where the schema has no such field).
  shapes = {
    for key, s in local.laid_out : key => {
      partition   = coalesce(try(s.layout.partition, null), "ingest_time")
      granularity = coalesce(try(s.layout.granularity, null), "DAY")
      clustering  = try(s.layout.clustering, null) == null ? ["ingest_time"] : s.layout.clustering
      # Whether pages may read whole partitions (a clustering not led by ingest_time);
      # a table no page reads may.
      pages_read_whole_partitions = s.paged ? coalesce(try(s.layout.pages_read_whole_partitions, null), false) : true
      columns = {
        for name, source in coalesce(try(s.layout.columns, null), {}) : name => {
          source = source
          type = (
            startswith(source, "attributes.") && length(source) > length("attributes.") ? "STRING"
            : startswith(source, "fields.") ? lookup(local.typed_leaves[s.system], trimprefix(source, "fields."), "")
            : ""
          )
        }
      }
    }
  }
  # Each system's layout of `records`, and its tables of their own by name (without
  # pages_read_whole_partitions, which concerns `records` alone).
  layouts = { for k in keys(local.systems) : k => local.shapes[k] }
  tables = {
    for k, v in local.systems : k => {
      for name in keys(coalesce(v.tables, {})) : name => {
        for field, value in local.shapes["${k} tables.${name}"] : field => value if field != "pages_read_whole_partitions"
      }
    }
  }
  # Every column each layout may name, by type.
  layout_types = {
    for key, l in local.shapes : key => merge(
      local.layout_service_columns,
      { for name, c in l.columns : name => c.type },
    )
  }

  # Why each layout cannot be, one reason a line; empty where it can.
  shape_problems = {
    for key, l in local.shapes : key => concat(
      length(l.clustering) > 4 ? ["clustering names ${length(l.clustering)} columns, and BigQuery clusters a table by at most four"] : [],
      length(distinct(l.clustering)) == length(l.clustering) ? [] : ["clustering names a column twice"],
      contains(["DAY", "MONTH", "YEAR"], l.granularity) ? [] : ["granularity is ${l.granularity}, not DAY, MONTH or YEAR"],
      [
        for c in [l.partition] : "partition is ${c}, which records does not have (ingest_time, timestamp, publish_time, or a name of ${local.laid_out[key].named}.columns)"
        if !contains(keys(local.layout_types[key]), c)
      ],
      [
        for c in [l.partition] : "partition is ${c}, a ${lookup(local.layout_types[key], c, "")} column: a table is partitioned by time only by a DATE or TIMESTAMP column"
        if lookup(local.layout_types[key], c, "") != "" && !contains(local.layout_partitionable, lookup(local.layout_types[key], c, ""))
      ],
      [
        for c in l.clustering : "clustering names ${c}, which records does not have (one of its columns ${join(", ", sort(keys(local.layout_service_columns)))}, or a name of ${local.laid_out[key].named}.columns)"
        if !contains(keys(local.layout_types[key]), c)
      ],
      [
        for c in l.clustering : "clustering names ${c}, a ${lookup(local.layout_types[key], c, "")} column: BigQuery clusters by top-level columns of type ${join(", ", local.layout_clusterable)} only"
        if lookup(local.layout_types[key], c, "") != "" && !contains(local.layout_clusterable, lookup(local.layout_types[key], c, ""))
      ],
      [
        for name, c in l.columns : "columns.${name} copies ${c.source}, which is neither attributes.KEY nor fields.PATH"
        if !startswith(c.source, "fields.") && c.type == ""
      ],
      [
        for name, c in l.columns : "columns.${name} copies ${c.source}, and the system's schema makes no typed field ${trimprefix(c.source, "fields.")} (${length(local.typed_leaves[local.laid_out[key].system]) == 0 ? "it has no typed columns" : "it has ${join(", ", sort(keys(local.typed_leaves[local.laid_out[key].system])))}"})"
        if startswith(c.source, "fields.") && c.type == ""
      ],
      [
        for name, c in l.columns : "columns.${name} copies ${c.source}, a ${c.type} field, which BigQuery can neither partition nor cluster by"
        if c.type != "" && !contains(local.layout_clusterable, c.type)
      ],
      # The fill reads an attribute of a table of the system's own by a quoted JSONPath
      # member, which escapes nothing (app/store/bigquery/fill.py); `records`' copies are
      # written from the key itself.
      [
        for name, c in l.columns : "columns.${name} copies ${c.source}, a key holding \", \\ or a control character, which the fill's JSONPath cannot name"
        if !local.laid_out[key].paged && startswith(c.source, "attributes.") && can(regex("[\"\\\\[:cntrl:]]", trimprefix(c.source, "attributes.")))
      ],
      [
        for name, c in l.columns : "columns.${name} takes the name of a column of the service's own"
        if contains(local.layout_reserved, lower(name))
      ],
      [
        for name, c in l.columns : "columns.${name} is no column name a copy can have: letters, digits and _, not a digit first, at most 300, not starting with _TABLE_, _FILE_ or _PARTITION"
        if !can(regex("^[A-Za-z_][A-Za-z0-9_]{0,299}$", name)) || can(regex("^(?i)(_table_|_file_|_partition)", name))
      ],
      try(l.clustering[0], "") == "ingest_time" || l.pages_read_whole_partitions ? [] : [
        "clustering starts with ${try(l.clustering[0], "nothing")}, not ingest_time, so the read API's pages, which scan ranges of ingest_time, would read whole partitions, every column (docs/layouts.md#the-read-api-on-each-layout): cluster by ingest_time first, or set pages_read_whole_partitions = true to mean it"
      ],
      # Partition expiry deletes a partition by the date of its partitioning column: by
      # an event's own time, an event older than retention_days would be deleted as it
      # landed (and one far in the future kept for ever). A table of a system's own
      # keeps its rows as long as `records` does (modules/system/bigquery.tf).
      var.retention_days > 0 && l.partition != "ingest_time" ? ["partition is ${l.partition} while retention_days is ${var.retention_days}: partitions expire by their column's date, so an event older than that would be deleted as it landed; keep rows forever (retention_days = 0) or partition by ingest_time"] : [],
    )
  }

  # Why each system's layout, or a table of its own, cannot be: a table's reasons
  # each after its name. A system has at most four tables of its own (each is every
  # row again, filled and stored: docs/layouts.md), named as BigQuery and the fill's
  # job ids take them (records_NAME; recordline_fill_<dataset>_records_NAME_<day>_<n>).
  layout_problems = {
    for k, v in local.systems : k => concat(
      local.shape_problems[k],
      flatten([
        for name in sort(keys(coalesce(v.tables, {}))) : [
          for p in local.shape_problems["${k} tables.${name}"] : "tables.${name}: ${p}"
        ]
      ]),
      length(coalesce(v.tables, {})) > 4 ? ["tables declares ${length(v.tables)} tables, and a system has at most four of its own: each holds every row again, filled and stored"] : [],
      [
        for name in sort(keys(coalesce(v.tables, {}))) : "tables.${name} is no table name: 1 to 30 lower-case letters, digits and _, a letter first (the table is records_${name})"
        if !can(regex("^[a-z][a-z0-9_]{0,29}$", name))
      ],
      # The dataset's table functions (modules/system/bigquery.tf), which the analyst
      # and the fill call by name.
      [
        for name in sort(keys(coalesce(v.tables, {}))) : "tables.${name} is records_${name}, the name of the dataset's table function: name it otherwise"
        if contains(["unique", "latest"], name)
      ],
    )
  }
}

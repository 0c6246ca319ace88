//! The operation table: every `charging.v1` call, one row each.
//!
//! Adding an operation is its messages and rpc in `charging.proto`, its
//! ledger command and decision, and one row here. What every operation
//! needs besides is made from its row, by the crate that needs it:
//!
//! | column   | read by                 | makes                                           |
//! |----------|-------------------------|-------------------------------------------------|
//! | doc      | client                  | the doc of the client's call                    |
//! | `on`     | client                  | `account`: routed to the account's shard leader |
//! | `serve`  | node tonic service      | the `Charging` method: forwards to this         |
//! | `stream` | node tonic service      | the stream arm: `batched` (one message per      |
//! |          |                         | shard actor) or `unary` (the unary path)        |
//! | `client` | client                  | `pair`: `op` and `op_with_id`; `read`: `op`     |
//! | `decide` | node front door         | its `Mutation`: message → ledger request        |
//! |          |                         | (validation), reply → response                  |
//! | `shows`  | `chargectl`             | its `key: value` lines, in words                |
//!
//! The `decide` and `serve` columns are Rust in the node's front door
//! (`node/src/frontdoor`: paths, or closures for a simple operation), the
//! `client` column Rust in the client library: a macro's tokens mean
//! nothing until a crate expands them, and each crate reads only its own
//! columns. Rows without `serve` are written by hand in
//! the node's service (`set_tariff`, `get_tariffs`).
//!
//! `shows` words: `number`, `units` (e.g. "10000000 bytes (10.0 MB), 60 s"),
//! `yes_no`, `time` (unix ms with its UTC date and how far away it is).
//! `[result, ...]` starts with the result code's name; `[]` means the
//! response has its own text in `chargectl`.

/// Expands `$then! { rows }` with the table's rows (see the module doc).
///
/// A row: `$(#[doc])* op(Request -> Response) on [..] serve [..]
/// stream [..] client [..] decide [..] shows [..];`
#[macro_export]
macro_rules! charging_ops {
    ($then:ident) => {
        $then! {
            /// Creates an account. `initial_balance` goes to money bucket 1;
            /// `credit_limit` 0 means prepaid.
            create_account(CreateAccountRequest -> CreateAccountResponse)
                on [account] serve [FrontDoor::mutate] stream [batched CreateAccount]
                client [pair create_account_with_id (account: impl Into<String>, currency: impl Into<String>,
                        initial_balance: i64, credit_limit: i64, buckets: Vec<BucketSpec>)
                    { account_id: account.into(), currency: currency.into(), credit_limit, initial_balance, buckets }]
                decide [validate::create_account => convert::create_account]
                shows [result, "version": version as number];

            /// Adds a bucket to an account.
            add_bucket(AddBucketRequest -> AddBucketResponse) on [account] serve [FrontDoor::mutate] stream []
                client [pair add_bucket_with_id (account: impl Into<String>, bucket: BucketSpec)
                    { account_id: account.into(), bucket: Some(bucket) }]
                decide [validate::add_bucket => convert::add_bucket] shows [result, "bucket-id": bucket_id as number];

            /// Tops up a bucket (`bucket_id` 0 = the main money bucket).
            top_up(TopUpRequest -> TopUpResponse) on [account] serve [FrontDoor::mutate] stream [batched TopUp]
                client [pair top_up_with_id (account: impl Into<String>, bucket_id: u32, amount: i64)
                    { account_id: account.into(), bucket_id, amount }]
                decide [validate::top_up => convert::top_up] shows [result, "balance": balance as number];

            /// Reserves units on a rating group within a session (3GPP initial request).
            reserve(ReserveRequest -> ReserveResponse) on [account] serve [FrontDoor::mutate] stream [batched Reserve]
                client [pair reserve_with_id (account: impl Into<String>, session: impl Into<String>, seq: u64,
                        rating_group: u32, requested: Units)
                    { account_id: account.into(), session_id: session.into(), seq, rating_group, requested: Some(requested) }]
                decide [validate::reserve => convert::reserve]
                shows [result, "reservation-id": reservation_id as number, "granted": granted as units,
                    "final-units": final_units as yes_no, "expires-at": expires_at_ms as time];

            /// Reports usage and asks for more on several rating groups at once.
            update(UpdateRequest -> UpdateResponse) on [account] serve [FrontDoor::mutate] stream [batched Update]
                client [pair update_with_id (account: impl Into<String>, session: impl Into<String>, seq: u64, reports: Vec<UsageReport>)
                    { account_id: account.into(), session_id: session.into(), seq, reports }]
                decide [validate::update => convert::update] shows [result, "charged": charged as number, "debt": debt as number];

            /// Opens a session with 0..n rating groups (Nchf Create), or updates
            /// it when it is open already; never refused for one rating group's sake.
            open_session(OpenSessionRequest -> OpenSessionResponse) on [account] serve [FrontDoor::mutate] stream []
                client [pair open_session_with_id (account: impl Into<String>, session: impl Into<String>, seq: u64, reports: Vec<UsageReport>)
                    { account_id: account.into(), session_id: session.into(), seq, reports }]
                decide [validate::open_session => convert::open_session] shows [result, "charged": charged as number, "debt": debt as number];

            /// Charges the final usage of a session and releases all it holds.
            terminate(TerminateRequest -> TerminateResponse) on [account] serve [FrontDoor::mutate] stream [batched Terminate]
                client [pair terminate_with_id (account: impl Into<String>, session: impl Into<String>, seq: u64, reports: Vec<UsageReport>)
                    { account_id: account.into(), session_id: session.into(), seq, reports }]
                decide [validate::terminate => convert::terminate] shows [result, "charged": charged as number, "debt": debt as number];

            /// Commits usage against one reservation; `final_` resolves it.
            commit(CommitRequest -> CommitResponse) on [account] serve [FrontDoor::mutate] stream [batched Commit]
                client [pair commit_with_id (account: impl Into<String>, reservation_id: u64, used: Units, final_: bool)
                    { account_id: account.into(), reservation_id, used: Some(used), r#final: final_ }]
                decide [validate::commit => convert::commit] shows [result, "charged": charged as number, "debt": debt as number];

            /// Releases a reservation without charging.
            release(ReleaseRequest -> ReleaseResponse) on [account] serve [FrontDoor::mutate] stream [batched Release]
                client [pair release_with_id (account: impl Into<String>, reservation_id: u64)
                    { account_id: account.into(), reservation_id }]
                decide [validate::release => convert::release] shows [result];

            /// Refunds part or all of the charge made by the request `original_request_id`.
            refund(RefundRequest -> RefundResponse) on [account] serve [FrontDoor::mutate] stream [batched Refund]
                client [pair refund_with_id (account: impl Into<String>, original_request_id: Uuid, amount: i64)
                    { account_id: account.into(), original_request_id: request_id_bytes(original_request_id), amount }]
                decide [validate::refund => convert::refund] shows [result, "refunded-total": refunded_total as number];

            /// A one-shot event charge, without a reservation.
            debit(DebitRequest -> DebitResponse) on [account] serve [FrontDoor::mutate] stream [batched Debit]
                client [pair debit_with_id (account: impl Into<String>, rating_group: u32, units: Units)
                    { account_id: account.into(), rating_group, units: Some(units) }]
                decide [validate::debit => convert::debit] shows [result, "charged": charged as number];

            /// Reads an account's balance (a read: no request id).
            balance(BalanceRequest -> BalanceResponse) on [account] serve [FrontDoor::balance] stream [unary Balance]
                client [read (account: impl Into<String>) { account_id: account.into() }]
                decide [] shows [];

            /// Changes an account's lifecycle state.
            set_account_state(SetAccountStateRequest -> SetAccountStateResponse)
                on [account] serve [FrontDoor::mutate] stream []
                client [pair set_account_state_with_id (account: impl Into<String>, state: AccountState)
                    { account_id: account.into(), state: state as i32 }]
                decide [validate::set_state => convert::set_state] shows [result];

            /// Sets the tariff of a rating group (its `version` is assigned by the server).
            set_tariff(SetTariffRequest -> SetTariffResponse) on [cluster] serve [] stream []
                client [pair set_tariff_with_id (tariff: Tariff) { tariff: Some(tariff) }]
                decide [] shows [result, "version": version as number];

            /// Lists all tariffs.
            get_tariffs(GetTariffsRequest -> GetTariffsResponse) on [cluster] serve [] stream []
                client [read () {}] decide [] shows [];

            /// Creates many accounts in one call (for loaders; no client call).
            bulk_create_accounts(BulkCreateAccountsRequest -> BulkCreateAccountsResponse)
                on [cluster] serve [bulk::bulk_create] stream [] client [] decide [] shows [];
        }
    };
}

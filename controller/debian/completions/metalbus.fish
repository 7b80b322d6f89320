# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_metalbus_global_optspecs
    string join \n h/help V/version
end

function __fish_metalbus_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_metalbus_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_metalbus_using_subcommand
    set -l cmd (__fish_metalbus_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c metalbus -n "__fish_metalbus_needs_command" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_needs_command" -s V -l version -d 'Print version'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "serve" -d 'Run the controller: embedded MQTT broker, store, HTTP API'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "nodes" -d 'Inspect and manage nodes'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "mqtt-acl" -d 'Print a Mosquitto ACL file confining each node to its own topics (for an external broker)'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "mosquitto-config" -d 'Print the mosquitto.conf lines for an external Mosquitto whose logins bind each client to its node: the controller keeps the password and ACL files in [broker] mosquitto_dir'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "backup" -d 'Take a consistent copy of the whole store while the controller runs (admin token): nodes, history, events, commands, tokens, metrics history. Written to FILE (a new file, mode 0600) whole or not at all'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "restore" -d 'Put a backup in place of the store in DIR. Stop the controller first; the store it replaces is kept as metalbus.redb.before-restore'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "campaigns" -d 'Run one action over many nodes (a campaign), with a rollout limit and abort rules; follow, pause, resume or cancel it'
complete -c metalbus -n "__fish_metalbus_needs_command" -f -a "tokens" -d 'Manage API and enrollment tokens'
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l config -d 'Config file (TOML)' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l data-dir -d 'Data directory [default: ./metalbus-data]' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l mqtt-listen -d 'Embedded MQTT broker address [default: 127.0.0.1:1883]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l broker -d 'Use this external MQTT broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of the embedded one' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l broker-ca -d 'PEM file of the CA that signs the external mqtts:// broker\'s certificate [default: the system\'s root certificates]' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l http-listen -d 'HTTP API address [default: 127.0.0.1:8088]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l log-format -d 'Log format [default: text]' -r -f -a "text\t'Human-readable lines (the default)'
json\t'One JSON object per line, for log shippers'"
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l local-agent -d 'Also run an agent for this host, so the controller manages its own machine'
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l mqtt-tls -d 'Serve the embedded broker over TLS (mqtts), with the [tls] certificate or one the controller issues from its own CA (DATA_DIR/tls/ca.pem)'
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l http-tls -d 'Serve the HTTP API over TLS (https), with the same certificate'
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -l insecure-plain -d 'Allow a plain listener on a non-loopback address (anyone on the network can read it; a warning is logged at every start)'
complete -c metalbus -n "__fish_metalbus_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "list" -d 'List nodes (all pages), by name; every filter given must match'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "watch" -d 'Follow state and progress changes live (from the API\'s event stream), starting with the current table; with -o json, one JSON object per line. Runs until interrupted'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "show" -d 'Show one node, by id or name, with the progress of a running job'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "register" -d 'Pre-register a node before its agent runs: the first new agent that matches (by MAC, then IP, then hostname prefix) takes its name, labels and group'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "manage" -d 'Install a discovered node with a plan (the default plan if none is named)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "unmanage" -d 'Deprovision an installed or active node; it returns to `discovered`'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "revoke" -d 'Revoke a node\'s credential (admin): its agent is disconnected at once and must enroll again with a token made after this'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "retry" -d 'Retry a failed install or deprovision (install_failed / deprovision_failed)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "retire" -d 'Deprovision and retire a node; with --force, retire it at once'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "transition" -d 'Move a node to STATE (any admin transition of docs/LIFECYCLE.md)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "reboot" -d 'Reboot a node: its agent runs its `reboot_command`. Prints the operation id'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "poweroff" -d 'Power a node off: its agent runs its `poweroff_command`'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "wake" -d 'Send Wake-on-LAN packets to a node\'s MAC addresses'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "history" -d 'A node\'s state changes, newest first'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "events" -d 'A node\'s events (online, offline, install progress, warnings), newest first; repeats are counted, not listed again'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and not __fish_seen_subcommand_from list watch show register manage unmanage revoke retry retire transition reboot poweroff wake history events metrics" -f -a "metrics" -d 'A node\'s cpu, memory, storage and network over a period: current, average and peak, with a sparkline'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l state -d 'Only nodes in this state, or these states separated by commas (e.g. installing,pending)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l phase -d 'Only nodes in this phase (e.g. Managed, ManagedFailed)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l online -d 'Only online nodes (`--online true`) or offline ones (`--online false`)' -r -f -a "true\t''
false\t''"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l search -d 'Only nodes whose name, hostname, id, a MAC or an IP contains this text' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l label -d 'Only nodes with this label, KEY=VALUE or just KEY; repeat for more' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l group -d 'Only nodes in this group' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from watch" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from watch" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from watch" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from watch" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from show" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from show" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from show" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from show" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l mac -d 'A MAC address of one of its NICs (aa:bb:cc:dd:ee:ff)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l ip -d 'One of its IP addresses' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l hostname -d 'Its hostname, or a prefix of it (`web` matches `web-01`, not `webby`)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l label -d 'A label, KEY=VALUE; repeat for more' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l group -d 'The group it belongs to' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -l enroll-token -d 'Also print a one-use enrollment token for exactly this host (admin): the agent that enrolls with it claims this registration'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from register" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -l plan -d 'The plan to install with (`demo`, or one of the controller\'s [plans])' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from manage" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from unmanage" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from unmanage" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from unmanage" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from unmanage" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from unmanage" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from revoke" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from revoke" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from revoke" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from revoke" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retry" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retry" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retry" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retry" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -l force -d 'Retire at once, without deprovisioning (admin only)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from retire" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -l comment -d 'Why: kept in the node\'s history with the transition' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -l force -d 'Reset the counters and allow overrides (admin only)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from transition" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -l timeout -d 'Give up waiting after this long, e.g. 30s or 5m (exit 7)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -l wait -d 'Wait until the operation succeeds or fails (exit 6 when it fails or expires)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from reboot" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -l timeout -d 'Give up waiting after this long, e.g. 30s or 5m (exit 7)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -l wait -d 'Wait until the operation succeeds or fails (exit 6 when it fails or expires)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from poweroff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -l timeout -d 'Give up waiting after this long, e.g. 30s or 5m (exit 7)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -l wait -d 'Wait until the operation succeeds or fails (exit 6 when it fails or expires)'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from wake" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -l limit -d 'At most this many entries, newest first' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -l offset -d 'Skip this many of the newest entries first (paging)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l type -d 'Only Normal or only Warning events' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l source -d 'Only events from `controller` or `agent`' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l since -d 'Only events seen within this long (e.g. 30m, 1h, 7d) or since an RFC 3339 time' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l limit -d 'At most this many events' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from events" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -l period -d '5m, 1h, 6h, 24h or 7d' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand nodes; and __fish_seen_subcommand_from metrics" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand mqtt-acl" -l prefix -d 'MQTT topic prefix' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand mqtt-acl" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand mosquitto-config" -l dir -d 'The controller\'s [broker] mosquitto_dir' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand mosquitto-config" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand backup" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand backup" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand backup" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand backup" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand restore" -l data-dir -d 'The controller\'s data directory' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand restore" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "create" -d 'Start a campaign: one action over the nodes a selector picks, at most --max-concurrent in flight at once; an abort rule pauses it when too many fail. Prints the campaign, or with --wait follows it to its end'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "list" -d 'List campaigns (all pages), newest first'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "show" -d 'Show a campaign: its action, state, counts, selector and rollout, then the outcome of each of its nodes'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "pause" -d 'Pause a running campaign: no node starts; those in flight finish'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "resume" -d 'Resume a paused campaign; its abort rules count again from here'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and not __fish_seen_subcommand_from create list show pause resume cancel" -f -a "cancel" -d 'Cancel a campaign: no node starts any more; those in flight finish. A campaign an abort rule paused ends `aborted`, any other `cancelled`'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l action -d 'What to do to each node' -r -f -a "manage\t''
unmanage\t''
retry\t''
reboot\t''
poweroff\t''
reprovision\t''"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l plan -d 'For --action manage: the plan to install with [default: the controller\'s default plan]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l label -d 'Only nodes with this label, KEY=VALUE or just KEY; repeat (or separate with commas) for more, all of which must match' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l state -d 'Only nodes in this state; repeat (or separate with commas) for any of several' -r -f -a "registered\t''
discovered\t''
pending\t''
installing\t''
install_failed\t''
installed\t''
active\t''
reprovision\t''
migrating\t''
deprovisioning\t''
deprovision_failed\t''
error\t''
retired\t''"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l group -d 'Only nodes in this group' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l search -d 'Only nodes whose name, hostname, id, a MAC or an IP contains this text' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l online -d 'Only online nodes (`--online true`) or offline ones (`--online false`)' -r -f -a "true\t''
false\t''"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l node -d 'This node, by name or id, instead of the filters; repeat for more' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l max-concurrent -d 'At most this many nodes in flight at once' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l max-per-minute -d 'At most this many nodes started in any minute [default: no limit]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l abort-failure-ratio -d 'Abort rule: pause when at least this share of the finished nodes failed (more than 0, at most 1; e.g. 0.2), once --abort-min-executed nodes have finished' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l abort-min-executed -d 'For --abort-failure-ratio: judge the share only once this many nodes have finished [default: 1]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l abort-max-failures -d 'Abort rule: pause when this many nodes have failed' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l timeout -d 'Give up waiting after this long, e.g. 30m or 2h (exit 7); the campaign runs on' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l force -d 'With --action reprovision: force it, as `nodes transition --force` does (admin only)'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -l wait -d 'Follow the campaign until it ends: exit 0 when it completes, 6 when it is aborted, cancelled or paused by an abort rule'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from list" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from list" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from list" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from list" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -l outcome -d 'Only the nodes with this outcome' -r -f -a "pending\t''
in_flight\t''
succeeded\t''
failed\t''
skipped\t''"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from pause" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from pause" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from pause" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from pause" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from resume" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from resume" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from resume" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from resume" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from cancel" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from cancel" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from cancel" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from cancel" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand campaigns; and __fish_seen_subcommand_from cancel" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -s h -l help -d 'Print help'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -f -a "create" -d 'Create a token; it is printed once. An API token (--role) is stored as a hash; an enrollment token (--enroll) lets agents enroll (metalbus-agent run --enroll-token-file FILE), limited by --ttl, --uses and --node'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -f -a "list" -d 'List API and enrollment tokens (never their secrets)'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and not __fish_seen_subcommand_from create list revoke" -f -a "revoke" -d 'Revoke a token by name: it stops working at once'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l name -d 'Unique among all tokens. For --enroll: lower-case letters, digits, . _ -' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l role -d 'viewer (reads), operator (manage, retry, ...), or admin (everything)' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l ttl -d 'How long the enrollment token is valid, e.g. 24h [default: forever]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l uses -d 'How many nodes the enrollment token may enroll [default: unlimited]' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l node -d 'The one node id the enrollment token may enroll' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -l enroll -d 'An enrollment token instead of an API token'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from list" -s o -l output -d 'How to print the result' -r -f -a "table\t'Aligned text for people'
json\t'JSON for scripts'"
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from list" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from list" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from list" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l api -d 'Base URL of the Metalbus API' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l token -d 'API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token' -r
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l ca -d 'PEM CA certificate that signs an https:// API\'s certificate. Default: METALBUS_CA, then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the controller\'s own CA), then the system\'s roots' -r -F
complete -c metalbus -n "__fish_metalbus_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'

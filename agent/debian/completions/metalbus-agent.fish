# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_metalbus_agent_global_optspecs
    string join \n h/help V/version
end

function __fish_metalbus_agent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_metalbus_agent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_metalbus_agent_using_subcommand
    set -l cmd (__fish_metalbus_agent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -s h -l help -d 'Print help'
complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -s V -l version -d 'Print version'
complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -f -a "run" -d 'Run the agent daemon (normally under systemd)'
complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -f -a "inventory" -d 'Print this host\'s hardware inventory as JSON and exit'
complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -f -a "simulate" -d 'Run N virtual agents in this process (real MQTT, outbox and protocol code; invented hosts and jobs), for load and fault tests'
complete -c metalbus-agent -n "__fish_metalbus_agent_needs_command" -f -a "metrics" -d 'Print one metrics sample as JSON and exit (takes about half a second)'
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l config -d 'Config file (TOML). Default: /etc/metalbus/agent.toml, if it exists' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l broker -d 'MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT [default: mqtt://127.0.0.1:1883]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l broker-ca -d 'PEM file of the CA that signs an mqtts:// broker\'s certificate [default: the system\'s root certificates]' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l node-id -d 'This node\'s id; derived from DMI, machine-id or MAC when not set' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l state-dir -d 'Where the agent keeps its state [default: /var/lib/metalbus-agent]' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l steps-dir -d 'The only directory job scripts are run from [default: /etc/metalbus/steps.d]' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l metrics-interval -d 'How often to publish metrics, e.g. 15s [default: 15s]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l resend-after -d 'Send unreceipted reports again after this long [default: 5s]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l prefix -d 'MQTT topic prefix [default: metalbus/v1]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l root -d 'Read /sys, /proc and /etc under this directory instead of / [default: /]' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l log-format -d 'Log format [default: text]' -r -f -a "text\t'Human-readable lines (the default)'
json\t'One JSON object per line, for log shippers'"
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l reboot-command -d 'Program and arguments run for a reboot command (no shell), e.g. `--reboot-command /usr/local/sbin/reboot-host --now` [default: systemctl reboot]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l poweroff-command -d 'Program and arguments run for a poweroff command [default: systemctl poweroff]' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l enroll-token-file -d 'Enrollment token file (the controller\'s DATA_DIR/enroll.token, or one from `metalbus tokens create --enroll`). Needed only until the node is enrolled; `simulate` enrolls every virtual agent with it once' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -l enroll-token -d 'Enrollment token (MB1:...). Prefer --enroll-token-file: a flag shows in `ps`' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand inventory" -l root -d 'Read /sys, /proc and /etc under this directory instead of /' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand inventory" -s h -l help -d 'Print help'
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l nodes -d 'How many virtual agents' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l broker -d 'MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l broker-ca -d 'PEM file of the CA that signs an mqtts:// broker\'s certificate [default: the system\'s root certificates]' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l metrics-interval -d 'Metrics interval of every virtual agent' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l seed -d 'Seed for the invented hosts' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l state-dir -d 'Parent of the agents\' state dirs (each agent\'s outbox lives there)' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l prefix -d 'Node ids are PREFIX-0001, PREFIX-0002, ...' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l progress-events -d 'Progress events each simulated install emits' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l progress-every -d 'Pause between two progress events' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l resend-after -d 'Send unreceipted reports again after this long' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l stats -d 'Write delivery counters per node (JSON) to this file, every second and at exit' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l topic-prefix -d 'MQTT topic prefix' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l enroll-token-file -d 'Enrollment token file (the controller\'s DATA_DIR/enroll.token, or one from `metalbus tokens create --enroll`). Needed only until the node is enrolled; `simulate` enrolls every virtual agent with it once' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -l enroll-token -d 'Enrollment token (MB1:...). Prefer --enroll-token-file: a flag shows in `ps`' -r
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand simulate" -s h -l help -d 'Print help'
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand metrics" -l root -d 'Read /sys, /proc and /etc under this directory instead of /' -r -F
complete -c metalbus-agent -n "__fish_metalbus_agent_using_subcommand metrics" -s h -l help -d 'Print help'

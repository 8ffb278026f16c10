# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmig_global_optspecs
    string join \n inventory= h/help V/version
end

function __fish_vmig_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vmig_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vmig_using_subcommand
    set -l cmd (__fish_vmig_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vmig -n "__fish_vmig_needs_command" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_needs_command" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_needs_command" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "migrate" -d 'Live-migrate a VM to another host, with progress'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "precheck" -d 'Check whether a VM can move to a host (or to each), rule by rule'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "evacuate" -d 'Empty a host for maintenance: plan every VM\'s move, cordon it, move them live'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "apply" -d 'Run an evacuation plan saved by `vmig evacuate HOST -o FILE`'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "rollback" -d 'Undo a run: move its VMs back, start those it stopped, lift its cordon'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "cancel" -d 'Cancel a VM\'s running migration, and report how it ended'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "run" -d 'Run a Lua runbook: scripted maintenance with the same functions, bars or JSON lines'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "history" -d 'Past migrations, from every agent\'s journal'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "audit" -d 'Who asked the agents for what: every change and refusal, from every agent\'s trail'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "hosts" -d 'List the cluster\'s hosts and their facts'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "host" -d 'Maintenance of one host: cordon it (it takes no new VMs) or uncordon it'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "vms" -d 'List the cluster\'s VMs and where they run'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "vm" -d 'Manage VMs: in the cluster (create, start, stop, destroy, show, console) or single VMM processes on this host (run, send, status, ...)'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "agent" -d 'The host daemon: runs VMs and migrates them agent to agent'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "pki" -d 'The cluster\'s certificate authority: create it, issue certificates'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "lab" -d 'A local lab: several agents and demo VMs on this machine'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "testguest" -d 'Work with the built-in test guest'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "generate" -d 'Write man pages and shell completions (for packagers and the repo)'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l downtime-ms -d 'The longest pause to plan for: switch over once the expected downtime is below this many milliseconds (and a few more live rounds no longer shrink what is left)' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l streams -d 'Parallel TCP streams: a number, or `auto` for as many as both hosts have free cores (one each, counted once when both are one machine)' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l guest-share -d 'The share of its vCPUs\' time (percent) the guest keeps during pre-copy where the migration\'s threads contend for its cores; lower trades the guest\'s time for a faster copy (0: the migration runs above the guest)' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l bandwidth -d 'Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l timeout -d 'Time limit in seconds for the whole migration' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l timeout-action -d 'What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now)' -r -f -a "cancel\t''
force\t''"
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l announce-rounds -d 'After the switchover, the target announces the VM\'s network cards (RARP from each MAC) this many times; 0: only the one at the pause' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l announce-initial-ms -d 'Milliseconds from the first announcement to the second; each later gap is --announce-step-ms longer, at most --announce-max-ms' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l announce-step-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l announce-max-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l skip -d 'Do not check this precheck rule (repeatable; `vmig precheck --help` lists them)' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l ping -d 'Probe ADDR (the VM\'s IPv4 address) with ICMP echo from here during the move, and report the probes lost and the longest gap between two answers beside the downtime' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l ping-interval-ms -d 'With --ping: milliseconds between probes' -r
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l no-auto-converge -d 'Do not throttle the vCPUs of a guest that dirties memory faster than the link sends'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l verify-memory -d 'Hash guest memory on both sides at switchover and refuse the handoff if they differ (for testing; adds the hashing time to the downtime)'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l dry-run -d 'Check that the move could start (the prechecks), and say what it would do; move nothing'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l force -d 'Move despite the prechecks\' warnings (never despite an error)'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -l json -d 'Print progress and the result as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand migrate" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l skip -d 'Do not check this rule (repeatable)' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l downtime-ms -d 'The longest pause to plan for: switch over once the expected downtime is below this many milliseconds (and a few more live rounds no longer shrink what is left)' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l streams -d 'Parallel TCP streams: a number, or `auto` for as many as both hosts have free cores (one each, counted once when both are one machine)' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l guest-share -d 'The share of its vCPUs\' time (percent) the guest keeps during pre-copy where the migration\'s threads contend for its cores; lower trades the guest\'s time for a faster copy (0: the migration runs above the guest)' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l bandwidth -d 'Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l timeout -d 'Time limit in seconds for the whole migration' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l timeout-action -d 'What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now)' -r -f -a "cancel\t''
force\t''"
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l announce-rounds -d 'After the switchover, the target announces the VM\'s network cards (RARP from each MAC) this many times; 0: only the one at the pause' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l announce-initial-ms -d 'Milliseconds from the first announcement to the second; each later gap is --announce-step-ms longer, at most --announce-max-ms' -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l announce-step-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l announce-max-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l json -d 'Print the verdicts as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l no-auto-converge -d 'Do not throttle the vCPUs of a guest that dirties memory faster than the link sends'
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -l verify-memory -d 'Hash guest memory on both sides at switchover and refuse the handoff if they differ (for testing; adds the hashing time to the downtime)'
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand precheck" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l to -d 'Only these hosts may take its VMs (comma-separated; default: any other)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l parallel -d 'Moves at once (each host\'s migration budget still holds)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l on-error -d 'After a VM fails to move: `continue` with the others, or `stop` starting new moves' -r -f -a "continue\t''
stop\t''"
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l deadline -d 'The most the evacuation may take (`90s`, `30m`, `2h`): then nothing new starts, and moves in flight are cancelled' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -s o -l output -d 'Write the plan to FILE (JSON) and move nothing; `vmig apply FILE` runs it' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l skip -d 'Do not check this precheck rule (repeatable)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l downtime-ms -d 'The longest pause to plan for: switch over once the expected downtime is below this many milliseconds (and a few more live rounds no longer shrink what is left)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l streams -d 'Parallel TCP streams: a number, or `auto` for as many as both hosts have free cores (one each, counted once when both are one machine)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l guest-share -d 'The share of its vCPUs\' time (percent) the guest keeps during pre-copy where the migration\'s threads contend for its cores; lower trades the guest\'s time for a faster copy (0: the migration runs above the guest)' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l bandwidth -d 'Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l timeout -d 'Time limit in seconds for the whole migration' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l timeout-action -d 'What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now)' -r -f -a "cancel\t''
force\t''"
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l announce-rounds -d 'After the switchover, the target announces the VM\'s network cards (RARP from each MAC) this many times; 0: only the one at the pause' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l announce-initial-ms -d 'Milliseconds from the first announcement to the second; each later gap is --announce-step-ms longer, at most --announce-max-ms' -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l announce-step-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l announce-max-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l dry-run -d 'Plan, print the plan, move nothing'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l force -d 'Move VMs despite the prechecks\' warnings (never despite an error)'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l no-auto-converge -d 'Do not throttle the vCPUs of a guest that dirties memory faster than the link sends'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l verify-memory -d 'Hash guest memory on both sides at switchover and refuse the handoff if they differ (for testing; adds the hashing time to the downtime)'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -l json -d 'Print events and the report as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand evacuate" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand apply" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand apply" -l json -d 'Print events and the report as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand apply" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand apply" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l parallel -d 'Moves at once' -r
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l deadline -d 'The most the rollback may take (`90s`, `30m`, `2h`)' -r
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l last -d 'Roll back this operator\'s latest run'
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l dry-run -d 'Say what would happen; change nothing'
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -l json -d 'Print events and the report as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand rollback" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand cancel" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand cancel" -l json -d 'Print the outcome as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand cancel" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand cancel" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand run" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand run" -l dry-run -d 'Change nothing: every change the runbook asks for is planned, and the plan printed'
complete -c vmig -n "__fish_vmig_using_subcommand run" -l yes -d 'Make the changes without asking (needed without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand run" -l json -d 'Print every event as a JSON line (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand run" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand run" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand history" -l vm -d 'Only the migrations of this VM' -r
complete -c vmig -n "__fish_vmig_using_subcommand history" -l host -d 'Only the migrations from or to this host' -r
complete -c vmig -n "__fish_vmig_using_subcommand history" -l run -d 'Only the migrations this run started (a runbook\'s `vmig.run_id`)' -r
complete -c vmig -n "__fish_vmig_using_subcommand history" -l since -d 'Only those started since: a duration ago (90s, 30m, 2h, 7d) or seconds since the epoch' -r
complete -c vmig -n "__fish_vmig_using_subcommand history" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand history" -l json -d 'Print JSON (every field of every record) instead of a table'
complete -c vmig -n "__fish_vmig_using_subcommand history" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand history" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l host -d 'Only this host\'s trail' -r
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l by -d 'Only requests made with this certificate name (an operator, or a host)' -r
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l vm -d 'Only the requests that name this VM' -r
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l run -d 'Only the requests of this run (a runbook\'s `vmig.run_id`)' -r
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l since -d 'Only those since: a duration ago (90s, 30m, 2h, 7d) or seconds since the epoch' -r
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand audit" -l json -d 'Print JSON (every field of every entry) instead of a table'
complete -c vmig -n "__fish_vmig_using_subcommand audit" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand audit" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand hosts" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand hosts" -l json -d 'Print JSON (all facts) instead of a table'
complete -c vmig -n "__fish_vmig_using_subcommand hosts" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand hosts" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -f -a "cordon" -d 'Cordon a host: it takes no new VMs (migrations to it and creations on it are refused, by the prechecks and by its agent) until uncordoned. Its agent keeps the cordon across restarts'
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -f -a "uncordon" -d 'Lift a host\'s cordon'
complete -c vmig -n "__fish_vmig_using_subcommand host; and not __fish_seen_subcommand_from cordon uncordon help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from cordon" -l reason -d 'Why (shown by `vmig hosts`, in prechecks and in refusals)' -r
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from cordon" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from cordon" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from cordon" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from cordon" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from uncordon" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from uncordon" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from uncordon" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from uncordon" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "cordon" -d 'Cordon a host: it takes no new VMs (migrations to it and creations on it are refused, by the prechecks and by its agent) until uncordoned. Its agent keeps the cordon across restarts'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "uncordon" -d 'Lift a host\'s cordon'
complete -c vmig -n "__fish_vmig_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand vms" -l host -d 'Only the VMs of this host' -r
complete -c vmig -n "__fish_vmig_using_subcommand vms" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vms" -l json -d 'Print JSON instead of a table'
complete -c vmig -n "__fish_vmig_using_subcommand vms" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vms" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "create" -d 'Define a VM on a host of the cluster and boot it'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "start" -d 'Boot a defined VM on its host'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "stop" -d 'Stop a VM (its definition stays)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "destroy" -d 'Stop a VM and forget it'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "show" -d 'Show a VM\'s definition, state and counters'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "console" -d 'Print a VM\'s serial console; follow it live across migrations (--follow) or attach to it (--attach, detach with Ctrl-])'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "cdrom" -d 'Insert or eject the medium of a VM\'s CD/DVD drive'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from create start stop destroy show console cdrom run status stats pause resume save shutdown send help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l spec -d 'Read the VM\'s definition from a TOML file' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l name -d 'The VM\'s name (unique in the cluster)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l kernel -d 'Kernel: a path on the host, or `builtin:testguest`' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l initrd -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l cmdline -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l memory -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l vcpus -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l redundancy-group -d 'VMs of one group must not share a chassis' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l disk -d 'A read-write disk: a raw image on one of the host\'s storage roots (repeatable)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l cdrom -d 'A CD/DVD drive with this ISO image as its medium' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l maintenance -d 'What host maintenance does with it: live (move it live), stop (shut it down, start it on return) or pin (never move it; evacuations report it)' -r -f -a "live\t''
stop\t''
pin\t''"
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l nic -d 'A network card on NETWORK (repeatable), with a MAC address derived from the VM\'s name unless one is given: `--nic lab` or `--nic lab=52:54:00:12:34:56`. A host runs the VM only if it has a bridge for the network' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l cpu -d 'The CPU the guest sees: `host` (all its host\'s KVM offers) or `baseline` (only what every host of the cluster offers, so it can move anywhere)' -r -f -a "host\t''
baseline\t''"
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l host -d 'The host to create it on (default: the one with the most memory available)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l pmu -d 'Give the guest virtual performance counters (a target needs a PMU as capable)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l no-start -d 'Define it without booting it'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from start" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from start" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from start" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stop" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stop" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stop" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from destroy" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from destroy" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from destroy" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from destroy" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from show" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from show" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -l bytes -d 'How much of the end of the console to print (first, with --follow or --attach)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -l from -d 'With --follow or --attach: begin at this absolute byte offset of the console instead of the last --bytes' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -s f -l follow -d 'Keep printing the console as the guest writes it, across migrations, until the VM stops'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -l attach -d 'Interactive: also send what is typed to the guest\'s console; detach with Ctrl-]'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -l json -d 'Print JSON (with --follow: one line per event)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from console" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -l json -d 'Print JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -a "insert" -d 'Put an ISO image into the VM\'s CD/DVD drive (the running guest sees it at once)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -a "eject" -d 'Take the medium out; the drive remembers it, to reconnect it later'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from cdrom" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l kernel -d 'Kernel to boot: a PVH ELF, a Linux bzImage or vmlinux, or `builtin:testguest`' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l initrd -d 'Initial ramdisk (Linux) or PVH module' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l cmdline -d 'Kernel command line' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l memory -d 'Guest memory (64M to 1T, a multiple of 2M)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l vcpus -d 'Number of vCPUs' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l drive -d 'A drive, in slot order: `disk:PATH` (read-write), `cdrom:PATH` or `cdrom-ejected:PATH` (a read-only CD/DVD with or without its medium in). The image is locked while this VMM may write or read it' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l nic -d 'A network card on NETWORK (repeatable, in the slots after the drives): `NETWORK=MAC`, or `NETWORK` for a MAC derived from the name. Its TAP joins the bridge --bridge gives for the network' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l bridge -d 'The host bridge of NETWORK: `NETWORK=BRIDGE` (repeatable). With --incoming, an arriving VM with a card on another network is refused' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l hide-cpu -d 'Hide this CPU feature (a /proc/cpuinfo name) from the guest; with --incoming, refuse a VM that uses it (repeatable)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l allow-disk -d 'With --incoming: an image the arriving VM may open (repeatable); a VM naming any other drive is refused' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l console -d 'Write the serial console to FILE instead of standard output' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l control -d 'Serve the control socket (status, pause, resume, save, stats, shutdown) at SOCKET' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l restore -d 'Continue a VM saved with `vmig vm save` instead of booting one' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l incoming -d 'Receive the VM by live migration: listen on tcp:HOST:PORT for `vmig vm send`' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l token-file -d 'With --incoming: accept only a sender that presents the migration token in FILE (64 hex digits; `vmig vm send --token-file` on the source)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l name -d 'The VM\'s name, shown to migration peers' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l record -d 'Keep the VMM\'s record in FILE (JSON): the migration handoff it passed and how it ended, for the agent that runs it' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l migration-id -d 'With --incoming: the agents\' id of the migration, for the record' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l accept-timeout -d 'A receiving VMM that no sender reached within S seconds ends (the source\'s agent keeps it waiting while it queues)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l stream-timeout -d 'A migration stream on which nothing moves for S seconds has failed' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l handoff-timeout -d 'Each side of the switchover waits S seconds for the other (and a receiver holding the state for Go)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l tls-cert -d 'This host\'s certificate (`vmig pki issue --host`): the migration streams are TLS 1.3, and the other side must be --tls-peer' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l tls-key -d 'The private key of --tls-cert' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l tls-ca -d 'The cluster CA\'s certificate, which the other side\'s must chain to' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l tls-peer -d 'The host at the other end, as its certificate names it' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l pmu -d 'Give the guest virtual performance counters (CPUID leaf 0xA); without it the leaf is hidden'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l control -d 'The source VMM\'s control socket' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l downtime-ms -d 'The longest pause to plan for: switch over once the expected downtime is below this many milliseconds (and a few more live rounds no longer shrink what is left)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l streams -d 'Parallel TCP streams: a number, or `auto` for as many as both hosts have free cores (one each, counted once when both are one machine)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l guest-share -d 'The share of its vCPUs\' time (percent) the guest keeps during pre-copy where the migration\'s threads contend for its cores; lower trades the guest\'s time for a faster copy (0: the migration runs above the guest)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l bandwidth -d 'Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l timeout -d 'Time limit in seconds for the whole migration' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l timeout-action -d 'What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now)' -r -f -a "cancel\t''
force\t''"
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l announce-rounds -d 'After the switchover, the target announces the VM\'s network cards (RARP from each MAC) this many times; 0: only the one at the pause' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l announce-initial-ms -d 'Milliseconds from the first announcement to the second; each later gap is --announce-step-ms longer, at most --announce-max-ms' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l announce-step-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l announce-max-ms -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l token-file -d 'The target\'s migration token (when it runs with `--token-file`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l tls-cert -d 'This host\'s certificate (`vmig pki issue --host`): the migration streams are TLS 1.3, and the other side must be --tls-peer' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l tls-key -d 'The private key of --tls-cert' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l tls-ca -d 'The cluster CA\'s certificate, which the other side\'s must chain to' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l tls-peer -d 'The host at the other end, as its certificate names it' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l no-auto-converge -d 'Do not throttle the vCPUs of a guest that dirties memory faster than the link sends'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l verify-memory -d 'Hash guest memory on both sides at switchover and refuse the handoff if they differ (for testing; adds the hashing time to the downtime)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l json -d 'Print progress and the final report as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "create" -d 'Define a VM on a host of the cluster and boot it'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "start" -d 'Boot a defined VM on its host'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Stop a VM (its definition stays)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "destroy" -d 'Stop a VM and forget it'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show a VM\'s definition, state and counters'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "console" -d 'Print a VM\'s serial console; follow it live across migrations (--follow) or attach to it (--attach, detach with Ctrl-])'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "cdrom" -d 'Insert or eject the medium of a VM\'s CD/DVD drive'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand agent" -s c -l config -d 'The agent\'s config file (TOML)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand agent" -l log-format -d 'How the log on standard error is written: one event a line, as text or as JSON objects (for journald or a log shipper); auto is text on a terminal and JSON otherwise' -r -f -a "auto\t''
text\t''
json\t''"
complete -c vmig -n "__fish_vmig_using_subcommand agent" -l log-level -d 'The least severe events the log keeps' -r -f -a "error\t''
warn\t''
info\t''
debug\t''"
complete -c vmig -n "__fish_vmig_using_subcommand agent" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand agent" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand agent" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -f -a "init" -d 'Create the cluster CA (ca.pem, ca.key) in a directory'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -f -a "issue" -d 'Issue a host or operator certificate signed by the cluster CA'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and not __fish_seen_subcommand_from init issue help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from init" -l dir -d 'Where the CA\'s files go; keep ca.key secret' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from init" -l cluster -d 'The cluster\'s name, written into every certificate' -r
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from init" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from init" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l dir -d 'The CA\'s directory (from `vmig pki init`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l host -d 'Issue a host certificate for the agent of NAME (server and client auth)' -r
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l operator -d 'Issue an operator certificate for NAME (client auth only)' -r
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l san -d 'Extra names or IP addresses the host is reached by (repeatable)' -r
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l out -d 'Where NAME.pem and NAME.key go (default: the CA\'s directory)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from issue" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from help" -f -a "init" -d 'Create the cluster CA (ca.pem, ca.key) in a directory'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from help" -f -a "issue" -d 'Issue a host or operator certificate signed by the cluster CA'
complete -c vmig -n "__fish_vmig_using_subcommand pki; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -f -a "up" -d 'Start the lab: agents hostA, hostB, ..., each a network namespace on a shared switch (or a loopback address), and demo VMs vm1, vm2, ...'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -f -a "demo" -d 'Bring the lab up if needed and take vm1\'s host through a maintenance with runbooks/rolling-maintenance.lua (evacuate, bring back), with progress bars'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -f -a "down" -d 'Stop every VM and agent of the lab and remove its files'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and not __fish_seen_subcommand_from up demo down help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l hosts -d 'Number of hosts (agents)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l vms -d 'Number of demo VMs, placed round-robin (1 vCPU each, the test guest dirtying memory)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l max-migration-cost -d 'Each host\'s migration cost limit (default: the agent\'s)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l storage-migrations -d 'Migrations the shared storage takes at once, cluster-wide (default 8)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l network -d 'How hosts are networked: `netns` (each host a network namespace with its own addresses and bridge, on a switch bridge here; VMs get network cards), `loopback` (loopback addresses, no VM network), or `auto` (netns where this machine allows it, else loopback)' -r -f -a "auto\t''
netns\t''
loopback\t''"
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l migration-encryption -d 'The agents\' `migration_encryption`: `tls` (TLS 1.3 streams with the host certificates) or `off` (plaintext, as for a dedicated trusted migration network)' -r -f -a "tls\t''
off\t''"
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l accept-timeout -d 'A receiving VMM that no sender reached within S seconds ends (the source\'s agent keeps it waiting while it queues)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l stream-timeout -d 'A migration stream on which nothing moves for S seconds has failed' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l handoff-timeout -d 'Each side of the switchover waits S seconds for the other (and a receiver holding the state for Go)' -r
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l dir -d 'Where the lab keeps its files (default: $VMIG_LAB_DIR, else ~/.local/state/vmig/lab)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from up" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from demo" -l dir -d 'Where the lab keeps its files (default: $VMIG_LAB_DIR, else ~/.local/state/vmig/lab)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from demo" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from demo" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from demo" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from down" -l dir -d 'Where the lab keeps its files (default: $VMIG_LAB_DIR, else ~/.local/state/vmig/lab)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from down" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from down" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from down" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "up" -d 'Start the lab: agents hostA, hostB, ..., each a network namespace on a shared switch (or a loopback address), and demo VMs vm1, vm2, ...'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "demo" -d 'Bring the lab up if needed and take vm1\'s host through a maintenance with runbooks/rolling-maintenance.lua (evacuate, bring back), with progress bars'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "down" -d 'Stop every VM and agent of the lab and remove its files'
complete -c vmig -n "__fish_vmig_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -f -a "medium" -d 'Write a CD/DVD medium (an image for `cdrom`) whose every word the test guest checks when it reads it (`disk=` workload)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export medium help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from export" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from export" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from medium" -l size -d 'Its size (a multiple of 64K)' -r
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from medium" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from medium" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from medium" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from help" -f -a "medium" -d 'Write a CD/DVD medium (an image for `cdrom`) whose every word the test guest checks when it reads it (`disk=` workload)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand generate" -l out-dir -d 'Directory that receives `man/` and `completions/`' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand generate" -l inventory -d 'The inventory file (default: $VMIG_INVENTORY, ./vmig.toml, ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab\'s)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand generate" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand generate" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "migrate" -d 'Live-migrate a VM to another host, with progress'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "precheck" -d 'Check whether a VM can move to a host (or to each), rule by rule'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "evacuate" -d 'Empty a host for maintenance: plan every VM\'s move, cordon it, move them live'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "apply" -d 'Run an evacuation plan saved by `vmig evacuate HOST -o FILE`'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "rollback" -d 'Undo a run: move its VMs back, start those it stopped, lift its cordon'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "cancel" -d 'Cancel a VM\'s running migration, and report how it ended'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "run" -d 'Run a Lua runbook: scripted maintenance with the same functions, bars or JSON lines'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "history" -d 'Past migrations, from every agent\'s journal'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "audit" -d 'Who asked the agents for what: every change and refusal, from every agent\'s trail'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "hosts" -d 'List the cluster\'s hosts and their facts'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "host" -d 'Maintenance of one host: cordon it (it takes no new VMs) or uncordon it'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "vms" -d 'List the cluster\'s VMs and where they run'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "vm" -d 'Manage VMs: in the cluster (create, start, stop, destroy, show, console) or single VMM processes on this host (run, send, status, ...)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "agent" -d 'The host daemon: runs VMs and migrates them agent to agent'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "pki" -d 'The cluster\'s certificate authority: create it, issue certificates'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "lab" -d 'A local lab: several agents and demo VMs on this machine'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "testguest" -d 'Work with the built-in test guest'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "generate" -d 'Write man pages and shell completions (for packagers and the repo)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from migrate precheck evacuate apply rollback cancel run history audit hosts host vms vm agent pki lab testguest generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "cordon" -d 'Cordon a host: it takes no new VMs (migrations to it and creations on it are refused, by the prechecks and by its agent) until uncordoned. Its agent keeps the cordon across restarts'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "uncordon" -d 'Lift a host\'s cordon'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "create" -d 'Define a VM on a host of the cluster and boot it'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "start" -d 'Boot a defined VM on its host'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "stop" -d 'Stop a VM (its definition stays)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "destroy" -d 'Stop a VM and forget it'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "show" -d 'Show a VM\'s definition, state and counters'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "console" -d 'Print a VM\'s serial console; follow it live across migrations (--follow) or attach to it (--attach, detach with Ctrl-])'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "cdrom" -d 'Insert or eject the medium of a VM\'s CD/DVD drive'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from pki" -f -a "init" -d 'Create the cluster CA (ca.pem, ca.key) in a directory'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from pki" -f -a "issue" -d 'Issue a host or operator certificate signed by the cluster CA'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "up" -d 'Start the lab: agents hostA, hostB, ..., each a network namespace on a shared switch (or a loopback address), and demo VMs vm1, vm2, ...'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "demo" -d 'Bring the lab up if needed and take vm1\'s host through a maintenance with runbooks/rolling-maintenance.lua (evacuate, bring back), with progress bars'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "down" -d 'Stop every VM and agent of the lab and remove its files'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from testguest" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from testguest" -f -a "medium" -d 'Write a CD/DVD medium (an image for `cdrom`) whose every word the test guest checks when it reads it (`disk=` workload)'

# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmig_global_optspecs
    string join \n h/help V/version
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

complete -c vmig -n "__fish_vmig_needs_command" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_needs_command" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "vm" -d 'Run and control single VMs on this host (one VMM process per VM)'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "testguest" -d 'Work with the built-in test guest'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "generate" -d 'Write man pages and shell completions (for packagers and the repo)'
complete -c vmig -n "__fish_vmig_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and not __fish_seen_subcommand_from run status stats pause resume save shutdown send help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l kernel -d 'Kernel to boot: a PVH ELF, a Linux bzImage or vmlinux, or `builtin:testguest`' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l initrd -d 'Initial ramdisk (Linux) or PVH module' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l cmdline -d 'Kernel command line' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l memory -d 'Guest memory (64M to 1T, a multiple of 2M)' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l vcpus -d 'Number of vCPUs' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l console -d 'Write the serial console to FILE instead of standard output' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l control -d 'Serve the control socket (status, pause, resume, save, stats, shutdown) at SOCKET' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l restore -d 'Continue a VM saved with `vmig vm save` instead of booting one' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l incoming -d 'Receive the VM by live migration: listen on tcp:HOST:PORT for `vmig vm send`' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -l name -d 'The VM\'s name, shown to migration peers' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from run" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from stats" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from pause" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from resume" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from save" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l control -d 'The VMM\'s control socket (as given to `vmig vm run --control`)' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l timeout -d 'Seconds to wait for the reply' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -l json -d 'Print the reply as JSON'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from shutdown" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l control -d 'The source VMM\'s control socket' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l downtime-ms -d 'Switch over once the expected downtime is below this many milliseconds' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l streams -d 'Parallel TCP streams' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l bandwidth -d 'Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l timeout -d 'Time limit in seconds for the whole migration' -r
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l timeout-action -d 'What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now)' -r -f -a "cancel\t''
force\t''"
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l no-auto-converge -d 'Do not throttle the vCPUs of a guest that dirties memory faster than the link sends'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l verify-memory -d 'Hash guest memory on both sides at switchover and refuse the handoff if they differ (for testing; adds the hashing time to the downtime)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -l json -d 'Print progress and the final report as JSON lines (the default without a terminal)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from send" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export help" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export help" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export help" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and not __fish_seen_subcommand_from export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from export" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'
complete -c vmig -n "__fish_vmig_using_subcommand testguest; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand generate" -l out-dir -d 'Directory that receives `man/` and `completions/`' -r -F
complete -c vmig -n "__fish_vmig_using_subcommand generate" -s h -l help -d 'Print help'
complete -c vmig -n "__fish_vmig_using_subcommand generate" -s V -l version -d 'Print version'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from vm testguest generate help" -f -a "vm" -d 'Run and control single VMs on this host (one VMM process per VM)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from vm testguest generate help" -f -a "testguest" -d 'Work with the built-in test guest'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from vm testguest generate help" -f -a "generate" -d 'Write man pages and shell completions (for packagers and the repo)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and not __fish_seen_subcommand_from vm testguest generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "run" -d 'Run a VM in the foreground: this process is its VMM'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "status" -d 'Show a running VMM\'s state'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "stats" -d 'Show a running VMM\'s counters (exits, resident memory, console bytes)'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "pause" -d 'Pause a running VM\'s vCPUs'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "resume" -d 'Resume a paused VM'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "save" -d 'Save a paused VM\'s complete state and memory into a directory'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "shutdown" -d 'Stop a VM and end its VMM process'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "send" -d 'Live-migrate a running VM to a VMM waiting with `vm run --incoming`'
complete -c vmig -n "__fish_vmig_using_subcommand help; and __fish_seen_subcommand_from testguest" -f -a "export" -d 'Write the test guest\'s PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`)'

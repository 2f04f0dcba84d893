using System.Reflection;
using System.Reflection.Emit;
using Cbd.Core.Format;

namespace Cbd.Core.Tests;

/// <summary>
/// Cbd.Core's namespaces form layers: Storage and Compression know nothing of the format, Format builds on
/// them, Engine and Maintenance on Format. A reference back down the other way makes a cycle, which this finds
/// from the compiled assembly: every type named in signatures, base types, attributes, locals and IL (a
/// constant is copied into IL as its value, so a use of one alone is not seen).
/// </summary>
public class NamespaceLayeringTests
{
    private static readonly Assembly s_core = typeof(Geometry).Assembly;

    [Fact]
    public void Cbd_Core_namespaces_have_no_cycle()
    {
        var edges = NamespaceReferences(s_core);
        var cycle = FindCycle(edges);
        Assert.True(cycle is null, $"namespace cycle: {string.Join(" -> ", cycle ?? [])}");
    }

    [Fact]
    public void Storage_and_Compression_know_nothing_of_the_format()
    {
        var edges = NamespaceReferences(s_core);
        foreach (string lower in new[] { "Cbd.Core.Storage", "Cbd.Core.Compression" })
            Assert.DoesNotContain("Cbd.Core.Format", edges.GetValueOrDefault(lower) ?? []);
    }

    [Fact]
    public void The_scan_sees_references_made_only_inside_method_bodies()
    {
        // Format calls CodecLimits.Validate (a static call in IL, no field, parameter or local of that type).
        Assert.Contains("Cbd.Core.Compression", NamespaceReferences(s_core)["Cbd.Core.Format"]);
        Assert.Equal(["A", "B", "A"], FindCycle(new() { ["A"] = ["B"], ["B"] = ["A"] }));
    }

    private static Dictionary<string, HashSet<string>> NamespaceReferences(Assembly assembly)
    {
        var edges = new Dictionary<string, HashSet<string>>();
        foreach (var type in assembly.GetTypes())
        {
            string from = type.Namespace ?? "";
            if (!from.StartsWith("Cbd.Core", StringComparison.Ordinal))
                continue;
            var to = edges.TryGetValue(from, out var set) ? set : edges[from] = [];
            foreach (var used in TypesUsedBy(type))
            {
                if (used.Assembly == assembly && used.Namespace is { } ns && ns != from && ns.StartsWith("Cbd.Core", StringComparison.Ordinal))
                    to.Add(ns);
            }
        }
        return edges;
    }

    private const BindingFlags Everything = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static IEnumerable<Type> TypesUsedBy(Type type)
    {
        var found = new List<Type>();
        void Add(Type? t)
        {
            if (t is null)
                return;
            if (t.HasElementType)
            {
                Add(t.GetElementType());
                return;
            }
            found.Add(t);
            if (t.IsGenericType && !t.IsGenericTypeDefinition)
            {
                foreach (var arg in t.GetGenericArguments())
                    Add(arg);
            }
        }

        Add(type.BaseType);
        foreach (var i in type.GetInterfaces())
            Add(i);
        foreach (var a in type.GetCustomAttributesData())
            Add(a.AttributeType);
        foreach (var f in type.GetFields(Everything))
            Add(f.FieldType);
        foreach (var p in type.GetProperties(Everything))
            Add(p.PropertyType);
        foreach (var method in type.GetMethods(Everything).Cast<MethodBase>().Concat(type.GetConstructors(Everything)))
        {
            if (method is MethodInfo info)
                Add(info.ReturnType);
            foreach (var p in method.GetParameters())
                Add(p.ParameterType);
            var body = method.GetMethodBody();
            if (body is null)
                continue;
            foreach (var local in body.LocalVariables)
                Add(local.LocalType);
            foreach (var member in MembersInIl(method.Module, body.GetILAsByteArray() ?? [], method))
            {
                switch (member)
                {
                    case Type t: Add(t); break;
                    case MemberInfo m: Add(m.DeclaringType); break;
                }
            }
        }
        return found;
    }

    private static readonly Dictionary<short, OpCode> s_opCodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>The types, methods and fields that IL instructions name by token.</summary>
    private static IEnumerable<MemberInfo> MembersInIl(Module module, byte[] il, MethodBase method)
    {
        var typeArgs = method.DeclaringType is { IsGenericType: true } d ? d.GetGenericArguments() : null;
        var methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        int at = 0;
        while (at < il.Length)
        {
            short value = il[at] == 0xFE ? (short)(0xFE00 | il[at + 1]) : il[at];
            at += il[at] == 0xFE ? 2 : 1;
            var op = s_opCodes[value];
            int operand = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, at),
                _ => 4,
            };
            if (op.OperandType is OperandType.InlineMethod or OperandType.InlineField or OperandType.InlineType or OperandType.InlineTok)
            {
                int token = BitConverter.ToInt32(il, at);
                MemberInfo? member = null;
                try
                {
                    member = module.ResolveMember(token, typeArgs, methodArgs);
                }
                catch (ArgumentException)
                {
                    // A token into another assembly that cannot be resolved here names no type of ours.
                }
                if (member is not null)
                    yield return member;
            }
            at += operand;
        }
    }

    /// <summary>A cycle as the list of its namespaces, first repeated at the end; null when there is none.</summary>
    private static List<string>? FindCycle(Dictionary<string, HashSet<string>> edges)
    {
        var state = new Dictionary<string, int>(); // 1 on the path, 2 done
        var path = new List<string>();

        List<string>? Visit(string node)
        {
            state[node] = 1;
            path.Add(node);
            foreach (string next in (edges.GetValueOrDefault(node) ?? []).Order(StringComparer.Ordinal))
            {
                if (state.GetValueOrDefault(next) == 1)
                    return [.. path.Skip(path.IndexOf(next)), next];
                if (state.GetValueOrDefault(next) == 0 && Visit(next) is { } cycle)
                    return cycle;
            }
            path.RemoveAt(path.Count - 1);
            state[node] = 2;
            return null;
        }

        foreach (string node in edges.Keys.Order(StringComparer.Ordinal))
        {
            if (state.GetValueOrDefault(node) == 0 && Visit(node) is { } cycle)
                return cycle;
        }
        return null;
    }
}
